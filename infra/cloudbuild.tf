# Cloud Build builds and pushes the chat image for `skaffold run` (skaffold.yaml, googleCloudBuild).
#
# The build runs as the project's default Cloud Build service account. For projects created since mid
# 2024 that is the Compute Engine default service account (PROJECT_NUMBER-compute@developer.gserviceaccount.com),
# and organisations that disable automatic IAM grants (the default for new organisations) leave it with no
# role at all: the first build then fails to push ("denied: Permission artifactregistry.repositories.uploadArtifacts")
# or to write its logs. Grant exactly what a skaffold build needs, to the account that runs it:
# - push to chat-app-repo only;
# - write build logs;
# - skaffold's bucket gs://PROJECT_ID_cloudbuild: skaffold uploads the build context there and points the
#   build's logsBucket at it. Created here rather than by skaffold's first run, so that the build account
#   can be granted on it before that run (see google_storage_bucket.cloudbuild).
# Older projects (or a project whose default was changed) use another account: find it with
#   gcloud builds get-default-service-account
# and set var.cloud_build_service_account to its e-mail.

# The Compute Engine default service account is created by Google some time after the Compute Engine API is
# enabled, not by the enabling call itself. Read it (Compute Engine's own record of the project's default
# account, then the account) instead of composing its e-mail: on a fresh project the read runs after the
# APIs are on, and if the account is not there yet it fails saying so, before any grant names a missing
# account; `terraform apply` again a few minutes later (docs/deploy.md, section 1).
data "google_compute_default_service_account" "default" {
  count   = var.cloud_build_service_account == "" ? 1 : 0
  project = var.project_id

  depends_on = [google_project_service.apis]
}

locals {
  cloud_build_service_account = (
    var.cloud_build_service_account != ""
    ? var.cloud_build_service_account
    : data.google_compute_default_service_account.default[0].email
  )
  cloud_build_member = "serviceAccount:${local.cloud_build_service_account}"
  # Bucket skaffold uses for Cloud Build sources and logs (its default: PROJECT_ID + "_cloudbuild").
  skaffold_build_bucket = "${var.project_id}_cloudbuild"
}

resource "google_artifact_registry_repository_iam_member" "build_push" {
  project    = var.project_id
  location   = google_artifact_registry_repository.chat.location
  repository = google_artifact_registry_repository.chat.name
  role       = "roles/artifactregistry.writer"
  member     = local.cloud_build_member
}

resource "google_project_iam_member" "build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = local.cloud_build_member

  depends_on = [google_project_service.apis]
}

# skaffold creates this bucket on its first build when it is missing (in the US multi-region, with the
# caller's rights), and then nobody has granted the build account on it. If it already exists (an earlier
# skaffold or `gcloud builds submit`), import it first:
#   terraform import google_storage_bucket.cloudbuild PROJECT_ID_cloudbuild
# No retention policy: Cloud Build refuses to write logs into a bucket that has one.
resource "google_storage_bucket" "cloudbuild" {
  # checkov:skip=CKV_GCP_62:Access logs of a bucket that holds build sources and build logs only would go to a second bucket to operate; Cloud Build's own audit logs say who built what.
  # checkov:skip=CKV_GCP_78:No versioning: skaffold deletes each uploaded source after its build, and a noncurrent copy of it would only cost.
  project  = var.project_id
  name     = local.skaffold_build_bucket
  location = var.region
  labels   = var.labels

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  # Build logs and left-over sources (a build interrupted before skaffold deleted its source).
  lifecycle_rule {
    action {
      type = "Delete"
    }
    condition {
      age = 30
    }
  }

  depends_on = [google_project_service.apis]
}

# A build account that is not the legacy Cloud Build account must be able to read the bucket itself
# (storage.buckets.get), not only its objects, before Cloud Build accepts it as the build's logsBucket
# ("builder service account does not have access to the bucket"): roles/storage.objectAdmin lacks it. The
# role Cloud Build documents for a user-owned logs bucket, granted on this one bucket only.
resource "google_storage_bucket_iam_member" "build_bucket" {
  bucket = google_storage_bucket.cloudbuild.name
  role   = "roles/storage.admin"
  member = local.cloud_build_member
}
