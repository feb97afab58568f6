# The APIs the codelab enables, plus what this stack adds: Compute Engine (Cloud NAT for the private
# nodes), Binary Authorization (the cluster enforces the project policy) and IAP (deploy/overlays/iap).
locals {
  services = toset([
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "binaryauthorization.googleapis.com",
    "cloudbuild.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "firestore.googleapis.com",
    "iap.googleapis.com",
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
