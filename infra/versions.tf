# Tool and provider versions. The google provider is pinned to the 6.x line: 7.0 renamed and removed
# arguments used here; move to it deliberately (read the upgrade guide, then `terraform plan`). The offline
# schema check (tests/infra/test_terraform_schema.py) holds the 6.50.0 schema, the newest with prebuilt
# bindings to take it from: a move to 7.x needs a 7.x schema there first.
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
