# Queue-depth autoscaling (deploy/base/gemma-hpa.yaml, chat-hpa.yaml): Managed Prometheus scrapes vLLM and
# the chat app into Cloud Monitoring; the Custom Metrics Stackdriver Adapter (installed once per cluster,
# docs/deploy.md "Autoscaling") reads them back for the HPAs. Its Kubernetes service account is an IAM
# principal of its own (Workload Identity Federation for GKE, as for the chat app: no Google service
# account, no impersonation) and needs only to read metrics.
locals {
  metrics_adapter_principal = join("/", [
    "principal://iam.googleapis.com/projects/${data.google_project.this.number}",
    "locations/global/workloadIdentityPools/${local.workload_pool}",
    "subject/ns/${var.metrics_adapter_namespace}/sa/${var.metrics_adapter_ksa}",
  ])
}

resource "google_project_iam_member" "metrics_adapter_viewer" {
  project = var.project_id
  role    = "roles/monitoring.viewer"
  member  = local.metrics_adapter_principal

  # The workload identity pool exists once the cluster does.
  depends_on = [google_container_cluster.autopilot]
}
