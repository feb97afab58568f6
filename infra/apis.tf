# The APIs the codelab enables, plus what this stack adds: Compute Engine (Cloud NAT for the private
# nodes), Binary Authorization (the cluster enforces the project policy), IAP (deploy/overlays/iap), Cloud
# Monitoring (Managed Prometheus and the custom-metrics adapter behind the queue-depth autoscaler),
# Container File System (GKE image streaming, docs/cold-start.md) and Cloud KMS (the key for Secrets,
# kms.tf). A fresh project also needs IAM (service accounts and their grants), Cloud Resource Manager
# (`data "google_project"`, project IAM members), Cloud Logging (build logs) and Cloud Storage (skaffold's
# build sources, Gemma's weights), Memorystore for Redis and Service Networking (its private services
# access: memorystore.tf).
# Service Usage itself (which enables these) is on in every project.
locals {
  services = toset([
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "binaryauthorization.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudkms.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "containerfilesystem.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iap.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "redis.googleapis.com",
    "servicenetworking.googleapis.com",
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "apis" {
  for_each = local.services

  project = var.project_id
  service = each.value

  # Turning an API off on `destroy` would break anything else in the project that uses it.
  disable_on_destroy         = false
  disable_dependent_services = false
}
