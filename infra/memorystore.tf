# What the chat replicas share (ui/shared.py): the per-user rate limit, the sign-in throttle, sign-outs and
# the claim that makes one message one turn. A few small counters with expiry: Memorystore for Redis, the
# smallest Standard (replicated) instance. Reached only from the VPC through private services access (no
# public address), with AUTH and in-transit encryption; the chat Pods get its URL (with the AUTH string and
# the CA's path) and the session secret from Secrets created out of band (docs/deploy.md, "Several
# replicas"). An outage never locks users out: each limit falls back as ui/shared.py says.

locals {
  vpc_network = "projects/${var.project_id}/global/networks/${var.network}"
}

# Private services access: an internal range of the VPC peered to Google's service producers (Memorystore).
resource "google_compute_global_address" "private_services" {
  project       = var.project_id
  name          = "hybrid-chat-private-services"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = 24
  network       = local.vpc_network

  depends_on = [google_project_service.apis]
}

resource "google_service_networking_connection" "private_services" {
  network                 = local.vpc_network
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_services.name]
}

resource "google_redis_instance" "shared_state" {
  project        = var.project_id
  name           = "hybrid-chat-shared-state"
  display_name   = "hybrid-chat shared state (rate limits, sign-in throttle, sign-outs, turn claims)"
  region         = var.region
  tier           = "STANDARD_HA"
  memory_size_gb = var.shared_state_memory_size_gb
  redis_version  = "REDIS_7_2"
  labels         = var.labels

  authorized_network = local.vpc_network
  connect_mode       = "PRIVATE_SERVICE_ACCESS"
  reserved_ip_range  = google_compute_global_address.private_services.name

  # Only clients that know the AUTH string (the chat Pods' Secret) and speak TLS (port 6378).
  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"

  # Counters and claims are worth nothing after a while: evict what expires first when memory is short.
  redis_configs = {
    maxmemory-policy = "volatile-ttl"
  }

  depends_on = [google_service_networking_connection.private_services]
}
