# Cloud Build builds and pushes the chat image for `skaffold run` (skaffold.yaml, googleCloudBuild).
#
# The build runs as the project's default Cloud Build service account. For projects created since mid
# 2024 that is the Compute Engine default service account (PROJECT_NUMBER-compute@developer.gserviceaccount.com),
# and organisations that disable automatic IAM grants (the default for new organisations) leave it with no
# role at all: the first build then fails to push ("denied: Permission artifactregistry.repositories.uploadArtifacts")
# or to write its logs. Grant exactly what a skaffold build needs, to the account that runs it:
# - push to chat-app-repo only;
# - write build logs;
# - read the uploaded sources and write the log files in skaffold's bucket gs://PROJECT_ID_cloudbuild
#   (skaffold creates it, uploads the build context there and points the build's logsBucket at it).
# Older projects (or a project whose default was changed) use another account: find it with
#   gcloud builds get-default-service-account
# and set var.cloud_build_service_account to its e-mail.
locals {
  cloud_build_service_account = (
    var.cloud_build_service_account != ""
    ? var.cloud_build_service_account
    : "${data.google_project.this.number}-compute@developer.gserviceaccount.com"
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

  # The default compute service account exists once the Compute Engine API is on.
  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "build_sources" {
  project = var.project_id
  role    = "roles/storage.objectAdmin"
  member  = local.cloud_build_member

  condition {
    title       = "only-skaffold-build-bucket"
    description = "Build sources and logs in skaffold's Cloud Build bucket only."
    expression  = "resource.name.startsWith(\"projects/_/buckets/${local.skaffold_build_bucket}\")"
  }

  depends_on = [google_project_service.apis]
}
