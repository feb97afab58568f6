# Docker repository for the chat image (skaffold --default-repo=REGION-docker.pkg.dev/PROJECT/chat-app-repo).
resource "google_artifact_registry_repository" "chat" {
  # checkov:skip=CKV_GCP_84:Images hold no secrets or user data (deploy/Dockerfile, .dockerignore); Google-managed encryption is used. CMEK would add a Cloud KMS key ring, key rotation and its IAM to operate for no gain here; add kms_key_name if your policy requires it.
  project       = var.project_id
  location      = var.region
  repository_id = "chat-app-repo"
  format        = "DOCKER"
  description   = "hybrid-chat container images"

  # Keep the newest versions, delete the rest: storage is billed per GB-month.
  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.image_retention_count
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.apis]
}

# GKE nodes pull the chat image: read access on this repository only.
resource "google_artifact_registry_repository_iam_member" "nodes_pull" {
  project    = var.project_id
  location   = google_artifact_registry_repository.chat.location
  repository = google_artifact_registry_repository.chat.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.gke_nodes.email}"
}
