# Tool and provider versions. The google provider is pinned to the 6.x line: 7.0 renamed and removed
# arguments used here; move to it deliberately (read the upgrade guide, then `terraform plan`).
terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region

  # Every resource carries these labels (GKE, Artifact Registry, ...): cost reports group by them.
  default_labels = var.labels
}
