# Gemma's weights in Cloud Storage, mounted read-only into every vLLM replica by the Cloud Storage FUSE
# CSI driver (deploy/components/weights-cache) with its file cache and parallel downloads: Google's
# guidance for loading model weights on GKE, chosen over Hyperdisk ML and secondary boot disks in
# docs/cold-start.md. The bucket is regional, in the cluster's region (no inter-region egress, and GPU
# nodes in any zone of the region read it alike). Filled once with the weights-loader Job
# (docs/cold-start.md, "Put the weights in the bucket"); ~24 GB, about USD 0.50 a month in Standard storage.
locals {
  # Kubernetes service accounts of deploy/base/gemma-serviceaccount.yaml and of the loader Job.
  gemma_ksa_principal = join("/", [
    "principal://iam.googleapis.com/projects/${data.google_project.this.number}",
    "locations/global/workloadIdentityPools/${local.workload_pool}",
    "subject/ns/${var.namespace}/sa/gemma-server",
  ])
  weights_loader_ksa_principal = join("/", [
    "principal://iam.googleapis.com/projects/${data.google_project.this.number}",
    "locations/global/workloadIdentityPools/${local.workload_pool}",
    "subject/ns/${var.namespace}/sa/gemma-weights-loader",
  ])
}

resource "google_storage_bucket" "model_weights" {
  # checkov:skip=CKV_GCP_62:Access logs would go to a second bucket to operate; the bucket holds public model weights, read by the vLLM Pods only.
  # checkov:skip=CKV_GCP_78:No versioning: the weights are written once by the loader Job; a new model version goes under a new prefix.
  project  = var.project_id
  name     = "${var.project_id}-model-weights"
  location = var.region
  labels   = var.labels

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection

  depends_on = [google_project_service.apis]
}

# vLLM reads (objects get and list: the mount lists the model's directory). Nothing else.
resource "google_storage_bucket_iam_member" "gemma_weights_reader" {
  bucket = google_storage_bucket.model_weights.name
  role   = "roles/storage.objectViewer"
  member = local.gemma_ksa_principal

  # The workload identity pool exists once the cluster does.
  depends_on = [google_container_cluster.autopilot]
}

# The one-off loader Job writes the weights (create, and delete for the rename at the end of each
# download).
resource "google_storage_bucket_iam_member" "weights_loader_writer" {
  bucket = google_storage_bucket.model_weights.name
  role   = "roles/storage.objectUser"
  member = local.weights_loader_ksa_principal

  depends_on = [google_container_cluster.autopilot]
}
