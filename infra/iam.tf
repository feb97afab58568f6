# Workload Identity Federation for GKE: the chat Pods' Kubernetes service account is itself an IAM
# principal (no Google service account, no key, no impersonation), so it needs no
# roles/iam.serviceAccountTokenCreator: nothing mints tokens for another identity.
data "google_project" "this" {
  project_id = var.project_id

  # Needs the Cloud Resource Manager API, which a fresh project may not have yet.
  depends_on = [google_project_service.apis]
}

locals {
  workload_pool = "${var.project_id}.svc.id.goog"
  chat_ksa_principal = join("/", [
    "principal://iam.googleapis.com/projects/${data.google_project.this.number}",
    "locations/global/workloadIdentityPools/${local.workload_pool}",
    "subject/ns/${var.namespace}/sa/${var.ksa_name}",
  ])
}

# Gemini on Vertex AI: the chat calls generateContent and streamGenerateContent on the publisher model,
# and countTokens for its readiness check (graph/backends.py). All three are authorised by one permission,
# aiplatform.endpoints.predict (Vertex AI's REST reference and IAM permissions list). roles/aiplatform.user
# would add ~700 more (datasets, training, endpoints, notebooks): a custom role with that one instead.
resource "google_project_iam_custom_role" "chat_vertex" {
  project     = var.project_id
  role_id     = "hybridChatGemini"
  title       = "hybrid-chat Gemini"
  description = "Call Gemini on Vertex AI: generateContent, streamGenerateContent and countTokens on publisher models."
  permissions = ["aiplatform.endpoints.predict"]

  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "chat_vertex_user" {
  project = var.project_id
  role    = google_project_iam_custom_role.chat_vertex.id
  member  = local.chat_ksa_principal

  # The workload identity pool exists once the cluster does.
  depends_on = [google_container_cluster.autopilot]
}

# Firestore read/write, limited by an IAM condition to the chat database only.
resource "google_project_iam_member" "chat_datastore_user" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = local.chat_ksa_principal

  condition {
    title       = "only-${google_firestore_database.chat.name}"
    description = "Firestore access limited to the chat memory database."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${google_firestore_database.chat.name}\""
  }

  depends_on = [google_container_cluster.autopilot]
}
