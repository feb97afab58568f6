# Attachments (images and PDFs sent in the chat, issue 15): one bucket, objects
# <user hash>/<conversation hash>/<sha256>. The app deletes a conversation's prefix when the user deletes
# the conversation; the lifecycle rule below deletes what a history TTL would have expired.
resource "google_storage_bucket" "attachments" {
  # checkov:skip=CKV_GCP_62:Access logs would go to a second bucket to operate; reads and writes are already in the app's own log (one line per turn) and Data Access audit logs can be turned on for the project if your policy requires them.
  # checkov:skip=CKV_GCP_78:No versioning on purpose: a deleted conversation's files must be gone, not kept as noncurrent versions.
  project  = var.project_id
  name     = "${var.project_id}-chat-attachments"
  location = var.region
  labels   = var.labels

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection

  # Deleted objects stay recoverable by an operator for 7 days, as Firestore's point-in-time recovery
  # keeps the conversations' text (firestore.tf): a wrong delete can be undone for both, and after 7 days
  # neither holds it. (Set 0 to have files gone at once; Cloud Storage's default is also 7 days.)
  soft_delete_policy {
    retention_duration_seconds = 604800
  }

  # Delete what the history TTL expires (HYBRID_CHAT_HISTORY_TTL_DAYS, set to the same number): Firestore
  # expires a conversation N days after its last update, Cloud Storage deletes a file N days after it was
  # written, so no file outlives its conversation (a file of a conversation still in use after N days is
  # deleted first: a later turn then reads a line saying what was there). 0: no rule, files stay until
  # their conversation is deleted.
  dynamic "lifecycle_rule" {
    for_each = var.history_ttl_days > 0 ? [var.history_ttl_days] : []
    content {
      action {
        type = "Delete"
      }
      condition {
        age = lifecycle_rule.value
      }
    }
  }

  # Uploads that never finished (a Pod stopped mid-upload) leave no parts behind.
  lifecycle_rule {
    action {
      type = "AbortIncompleteMultipartUpload"
    }
    condition {
      age = 1
    }
  }

  depends_on = [google_project_service.apis]
}

# What the app does with attachments and nothing more: create (uploads are create-only, never
# overwrite), get (read back, and the existence check before an upload), list and delete (a deleted
# conversation's prefix). No storage.objects.update, no IAM or bucket permissions: a custom role, as
# roles/storage.objectUser would add updates and managed folders, and objectCreator + objectViewer
# lack delete.
resource "google_project_iam_custom_role" "chat_attachments" {
  project     = var.project_id
  role_id     = "hybridChatAttachments"
  title       = "hybrid-chat attachments"
  description = "Create, read, list and delete the chat's attachment objects (granted on the attachments bucket only)."
  permissions = [
    "storage.objects.create",
    "storage.objects.delete",
    "storage.objects.get",
    "storage.objects.list",
  ]

  depends_on = [google_project_service.apis]
}

# Granted on the attachments bucket only, to the chat Pods' Workload Identity principal.
resource "google_storage_bucket_iam_member" "chat_attachments" {
  bucket = google_storage_bucket.attachments.name
  role   = google_project_iam_custom_role.chat_attachments.id
  member = local.chat_ksa_principal

  # The workload identity pool exists once the cluster does.
  depends_on = [google_container_cluster.autopilot]
}
