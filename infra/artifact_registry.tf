# Docker repository for the chat image (skaffold --default-repo=REGION-docker.pkg.dev/PROJECT/chat-app-repo).
resource "google_artifact_registry_repository" "chat" {
  # checkov:skip=CKV_GCP_84:Images hold no secrets or user data (deploy/Dockerfile, .dockerignore); Google-managed encryption is used. CMEK would add a Cloud KMS key ring, key rotation and its IAM to operate for no gain here; add kms_key_name if your policy requires it.
  project       = var.project_id
  location      = var.region
  repository_id = "chat-app-repo"
  format        = "DOCKER"
  description   = "hybrid-chat container images"

  # Keep the newest versions and what is deployed, delete the rest: storage is billed per GB-month. A KEEP
  # policy wins over a DELETE one (Artifact Registry's clean-up policies), so the image a Deployment pins
  # by digest survives however many builds come after it, as long as it carries a `deployed-` tag:
  # docs/deploy.md, step 5, moves `deployed-OVERLAY` to the digest running after each `skaffold run`.
  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.image_retention_count
    }
  }

  cleanup_policies {
    id     = "keep-deployed"
    action = "KEEP"
    condition {
      tag_state    = "TAGGED"
      tag_prefixes = ["deployed-"]
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

# vLLM's image (~10 GB) through Artifact Registry instead of from Docker Hub: a remote repository is a
# pull-through cache in the cluster's region. GKE then streams the image (image streaming needs the image
# in Artifact Registry or on Docker Hub, the Container File System API, and Private Google Access for
# private nodes), the nodes pull it without Cloud NAT (Private Google Access), and Docker Hub's pull limits
# apply once per version instead of once per node (docs/cold-start.md).
# No clean-up policy: a cached version that is deleted is fetched from Docker Hub again on the next pull,
# which is the slow start this repository exists to avoid; one vLLM version costs about USD 1 a month.
resource "google_artifact_registry_repository" "docker_hub" {
  # checkov:skip=CKV_GCP_84:A cache of public Docker Hub images (vLLM): nothing secret to protect with a customer-managed key; Google-managed encryption is used.
  project       = var.project_id
  location      = var.region
  repository_id = "docker-hub"
  format        = "DOCKER"
  mode          = "REMOTE_REPOSITORY"
  description   = "Docker Hub, cached in the region (the vLLM image)"

  remote_repository_config {
    description = "Docker Hub"
    docker_repository {
      public_repository = "DOCKER_HUB"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_artifact_registry_repository_iam_member" "nodes_pull_docker_hub" {
  project    = var.project_id
  location   = google_artifact_registry_repository.docker_hub.location
  repository = google_artifact_registry_repository.docker_hub.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.gke_nodes.email}"
}
