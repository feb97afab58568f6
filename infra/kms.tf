# Application-layer Secrets encryption: GKE encrypts Secrets (the Hugging Face token, anything else in
# etcd of kind Secret) with this Cloud KMS key before they reach the control plane's storage, on top of
# Google's default encryption at rest. The key lives in the cluster's region (GKE requires the key in the
# cluster's location), rotates every 90 days (new versions encrypt; old ones still decrypt), and only the
# GKE service agent may use it.
#
# A key ring and a key cannot be deleted in Cloud KMS: `terraform destroy` removes them from the state and
# destroys the key's versions, after the cluster that uses them is gone (the cluster depends on the key, so
# the cluster's deletion_protection also holds the key back). A re-created stack with the same names
# imports the key ring (`terraform import google_kms_key_ring.gke projects/P/locations/R/keyRings/NAME`).
resource "google_kms_key_ring" "gke" {
  project  = var.project_id
  name     = "${var.cluster_name}-keyring"
  location = var.region

  depends_on = [google_project_service.apis]
}

resource "google_kms_crypto_key" "gke_secrets" {
  # checkov:skip=CKV_GCP_82:prevent_destroy would make the documented tear-down (docs/deploy.md, Clean-up) fail; the key is destroyed only after the cluster that uses it (which has deletion_protection), and Cloud KMS keeps destroyed versions recoverable for 30 days.
  name            = "gke-secrets"
  key_ring        = google_kms_key_ring.gke.id
  purpose         = "ENCRYPT_DECRYPT"
  rotation_period = "7776000s" # 90 days
  labels          = var.labels
}

# The GKE service agent (service-PROJECT_NUMBER@container-engine-robot.iam.gserviceaccount.com) encrypts and
# decrypts with this key only. Google creates it shortly after the Kubernetes Engine API is enabled: on a
# fresh project the first apply may find it missing ("Service account ... does not exist"); apply again a
# minute later, as for the Compute Engine default account (docs/deploy.md, section 1).
resource "google_kms_crypto_key_iam_member" "gke_secrets" {
  crypto_key_id = google_kms_crypto_key.gke_secrets.id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:service-${data.google_project.this.number}@container-engine-robot.iam.gserviceaccount.com"
}
