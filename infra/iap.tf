# The global static IP of the IAP overlay's HTTPS load balancer (deploy/overlays/iap/ingress.yaml names it
# in kubernetes.io/ingress.global-static-ip-name). Reserved only when var.enable_iap is true: a reserved
# address is billed while no load balancer uses it. Point your DNS name at output iap_ip_address.
resource "google_compute_global_address" "iap" {
  count = var.enable_iap ? 1 : 0

  project      = var.project_id
  name         = var.iap_static_ip_name
  address_type = "EXTERNAL"
  ip_version   = "IPV4"
  labels       = var.labels

  depends_on = [google_project_service.apis]
}
