output "cluster_name" {
  description = "Name of the GKE Autopilot cluster."
  value       = google_container_cluster.autopilot.name
}

output "region" {
  description = "Region of the cluster and the image repository."
  value       = var.region
}

output "repository_url" {
  description = "Docker repository for the chat image; pass it to `skaffold run --default-repo=...`."
  value       = "${google_artifact_registry_repository.chat.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.chat.repository_id}"
}

output "get_credentials_command" {
  description = "Points kubectl at the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.autopilot.name} --region ${var.region} --project ${var.project_id}"
}

output "firestore_database" {
  description = "Firestore database id (HYBRID_CHAT_FIRESTORE_DATABASE)."
  value       = google_firestore_database.chat.name
}

output "attachments_bucket" {
  description = "Cloud Storage bucket for chat attachments (HYBRID_CHAT_ATTACHMENTS_BUCKET)."
  value       = google_storage_bucket.attachments.name
}

output "chat_workload_principal" {
  description = "IAM principal of the chat Pods (Kubernetes service account via Workload Identity Federation)."
  value       = local.chat_ksa_principal
}

output "cloud_build_service_account" {
  description = "Service account that runs skaffold's Cloud Build builds (granted push, log writing and its source bucket)."
  value       = local.cloud_build_service_account
}

output "iap_ip_address" {
  description = "Global static IP of the IAP load balancer (null unless enable_iap): create your DNS A record for it."
  value       = one(google_compute_global_address.iap[*].address)
}

output "weights_bucket" {
  description = "Cloud Storage bucket for Gemma's weights (deploy/components/weights-cache; docs/cold-start.md)."
  value       = google_storage_bucket.model_weights.name
}

output "vllm_image_repository" {
  description = "Artifact Registry remote repository for Docker Hub the vLLM image is pulled through."
  value       = "${google_artifact_registry_repository.docker_hub.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.docker_hub.repository_id}"
}

output "shared_state_host" {
  description = "Private address and TLS port of the Memorystore for Redis instance the replicas share: HYBRID_CHAT_REDIS_URL=rediss://default:AUTH@HOST:PORT/0?ssl_ca_certs=/etc/hybrid-chat/redis-ca/ca.pem (docs/deploy.md)."
  value       = "${google_redis_instance.shared_state.host}:${google_redis_instance.shared_state.port}"
}

output "shared_state_auth_string" {
  description = "AUTH string of the shared Memorystore instance, for the chat Pods' Secret (terraform output -raw shared_state_auth_string)."
  value       = google_redis_instance.shared_state.auth_string
  sensitive   = true
}

output "shared_state_ca_certs" {
  description = "CA certificates the instance's TLS is signed with, PEM (the hybrid-chat-redis-ca Secret's ca.pem)."
  value       = join("", [for cert in google_redis_instance.shared_state.server_ca_certs : cert.cert])
}
