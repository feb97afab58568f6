# GKE Autopilot: Google runs the nodes, GPU nodes (4x NVIDIA L4 for Gemma) are provisioned on demand
# from the Pods' nodeSelector/resources, and you pay per Pod resources (GPU Pods: per node).
#
# Hardening chosen here (beyond what Autopilot enforces by itself):
# - private nodes: no node has a public IP; they pull images from Artifact Registry (vLLM's through the
#   Docker Hub remote repository) over Private Google Access, and Pods reach Hugging Face through Cloud NAT
#   (below). The control plane keeps its public endpoint, restricted to var.master_authorized_networks.
# - Secrets encrypted at the application layer with a Cloud KMS key (kms.tf).
# - Binary Authorization in project-singleton mode: the project's policy (allow-all until you tighten it,
#   e.g. to images from chat-app-repo only) is enforced at admission.
# - a dedicated node service account instead of the Compute Engine default one (which often holds Editor,
#   or nothing at all in organisations that disable automatic grants).
# - release channel and labels.
resource "google_service_account" "gke_nodes" {
  project      = var.project_id
  account_id   = "${substr(var.cluster_name, 0, 20)}-nodes"
  display_name = "GKE nodes of ${var.cluster_name} (logging, monitoring, image pulls)"

  # A fresh project: the IAM API must be on before a service account can be created.
  depends_on = [google_project_service.apis]
}

# The minimum a GKE node needs (logs, metrics, Autopilot's own agents).
resource "google_project_iam_member" "gke_nodes_default" {
  project = var.project_id
  role    = "roles/container.defaultNodeServiceAccount"
  member  = "serviceAccount:${google_service_account.gke_nodes.email}"

  depends_on = [google_project_service.apis]
}

# Image streaming with a node service account other than the default one needs Service Usage Consumer in
# the project that holds the images (GKE's image streaming requirements; docs/cold-start.md).
resource "google_project_iam_member" "gke_nodes_image_streaming" {
  project = var.project_id
  role    = "roles/serviceusage.serviceUsageConsumer"
  member  = "serviceAccount:${google_service_account.gke_nodes.email}"

  depends_on = [google_project_service.apis]
}

resource "google_container_cluster" "autopilot" {
  # checkov:skip=CKV_GCP_12:Autopilot enforces GKE Dataplane V2, which always enforces NetworkPolicy; the network_policy block is not settable on Autopilot.
  # checkov:skip=CKV_GCP_13:Autopilot disables client certificate issuance and cannot re-enable it; master_auth is not settable on Autopilot.
  # checkov:skip=CKV_GCP_23:Autopilot clusters are always VPC-native (alias IP ranges); ip_allocation_policy is filled in by GKE.
  # checkov:skip=CKV_GCP_61:Autopilot enables intranode visibility itself; VPC flow logs are a subnet setting of the (default) network, not of this cluster.
  # checkov:skip=CKV_GCP_69:Autopilot always runs the GKE metadata server (Workload Identity Federation is always on); workload_metadata_config is not settable on Autopilot.
  # checkov:skip=CKV_GCP_65:Google Groups for RBAC needs a Google Workspace / Cloud Identity domain with a gke-security-groups group; this stack grants access through IAM (roles/container.*) and has no in-cluster RBAC for people. Add authenticator_groups_config when such a group exists.
  name     = var.cluster_name
  project  = var.project_id
  location = var.region

  network          = var.network
  enable_autopilot = true

  deletion_protection = var.deletion_protection

  resource_labels = var.labels

  release_channel {
    channel = var.release_channel
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
  }

  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  # Managed collection for Google Cloud Managed Service for Prometheus (the Autopilot default, stated
  # here because the autoscalers depend on it: deploy/base/*-podmonitoring.yaml).
  monitoring_config {
    managed_prometheus {
      enabled = true
    }
  }

  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }

  # Secrets encrypted with the Cloud KMS key of kms.tf (application-layer Secrets encryption).
  database_encryption {
    state    = "ENCRYPTED"
    key_name = google_kms_crypto_key.gke_secrets.id
  }

  cluster_autoscaling {
    auto_provisioning_defaults {
      service_account = google_service_account.gke_nodes.email
      oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.gke_nodes_default,
    # GKE checks at creation that its service agent may use the key.
    google_kms_crypto_key_iam_member.gke_secrets,
  ]
}

# Private nodes have no public IP: Cloud NAT gives the Pods egress to the internet (Hugging Face for the
# Gemma weights, ~24 GB per cold start without the weights-cache overlay). Google APIs (Artifact Registry,
# Cloud Storage) go through Private Google Access where the subnet has it on, which image streaming
# requires for private nodes (docs/deploy.md's post-deploy checklist checks it; without it they go through
# this NAT and images are pulled whole).
resource "google_compute_router" "nat" {
  project = var.project_id
  name    = "${var.cluster_name}-router"
  region  = var.region
  network = var.network

  depends_on = [google_project_service.apis]
}

resource "google_compute_router_nat" "nat" {
  project                            = var.project_id
  name                               = "${var.cluster_name}-nat"
  router                             = google_compute_router.nat.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  # Cloud NAT's default is 64 source ports per VM, fixed: a GPU node downloading ~24 GB from Hugging Face
  # over many parallel connections (huggingface_hub's chunked downloads) runs out of them and its
  # connections wait or fail (OUT_OF_RESOURCES in the NAT log). Dynamic port allocation starts every VM at
  # 64 and grows it to 4096 as it needs them (it requires endpoint-independent mapping off).
  enable_dynamic_port_allocation      = true
  enable_endpoint_independent_mapping = false
  min_ports_per_vm                    = 64
  max_ports_per_vm                    = 4096

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}
