variable "project_id" {
  description = "Google Cloud project id that hosts the whole stack (cluster, Firestore, Artifact Registry, Vertex AI)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 chars: lowercase letters, digits, hyphens), not a project number or name."
  }
}

variable "region" {
  description = "Region of the Autopilot cluster and the Artifact Registry repository. Pick one with NVIDIA L4 GPUs (e.g. us-central1, us-east4, europe-west4, asia-southeast1)."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Compute Engine region such as us-central1 (not a zone such as us-central1-a)."
  }
}

variable "firestore_location" {
  description = "Location of the Firestore database: a region (e.g. us-central1) or a multi-region (nam5, eur3). Cannot be changed after creation."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^(nam5|nam7|eur3|[a-z]+-[a-z]+[0-9])$", var.firestore_location))
    error_message = "firestore_location must be a Firestore region (e.g. us-central1) or multi-region (nam5, nam7, eur3)."
  }
}

variable "network" {
  description = "VPC network of the cluster and of its Cloud NAT router. \"default\" is the auto-mode network new projects get; name yours if your organisation removes it."
  type        = string
  default     = "default"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", var.network))
    error_message = "network must be a VPC network name (lowercase letters, digits, hyphens)."
  }
}

variable "cluster_name" {
  description = "Name of the GKE Autopilot cluster."
  type        = string
  default     = "gradio-chat-cluster"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$", var.cluster_name))
    error_message = "cluster_name must be 1-40 chars: lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "namespace" {
  description = "Kubernetes namespace of the chat app; must match `namespace:` in deploy/base/kustomization.yaml (the Workload Identity principal names it)."
  type        = string
  default     = "hybrid-chat"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS-1123 label (lowercase letters, digits, hyphens; at most 63 chars)."
  }
}

variable "ksa_name" {
  description = "Kubernetes service account of the chat app (deploy/base/serviceaccount.yaml). It, and nothing else, gets Vertex AI and Firestore access."
  type        = string
  default     = "gradio-chat-ksa"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.ksa_name))
    error_message = "ksa_name must be a DNS-1123 label."
  }
}

variable "master_authorized_networks" {
  description = "CIDR blocks allowed to reach the cluster's control plane (kubectl, skaffold). The control plane is reached at its public IP endpoint only: every address that runs kubectl or skaffold needs a block here. Cloud Shell changes address per session: add `curl -s ifconfig.me`/32 and re-apply."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))

  validation {
    condition     = length(var.master_authorized_networks) > 0 && alltrue([for n in var.master_authorized_networks : can(cidrhost(n.cidr_block, 0))])
    error_message = "Give at least one valid CIDR block, e.g. 203.0.113.7/32."
  }

  validation {
    condition     = alltrue([for n in var.master_authorized_networks : n.cidr_block != "0.0.0.0/0"])
    error_message = "0.0.0.0/0 would open the control plane to the internet."
  }
}

variable "release_channel" {
  description = "GKE release channel (Autopilot upgrades itself along it)."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "deletion_protection" {
  description = "Protect the cluster and the Firestore database from `terraform destroy`. Set false only to tear everything down (docs/deploy.md, Clean-up)."
  type        = bool
  default     = true
}

variable "image_retention_count" {
  description = "Artifact Registry keeps this many most recent versions of each image, and every version tagged deployed-* (docs/deploy.md, step 5); the others are deleted by the clean-up policy after 30 days."
  type        = number
  default     = 10

  validation {
    condition     = var.image_retention_count >= 1 && var.image_retention_count <= 1000
    error_message = "image_retention_count must be between 1 and 1000."
  }
}

variable "labels" {
  description = "Labels put on every resource that supports them (cost attribution)."
  type        = map(string)
  default = {
    app        = "hybrid-chat"
    managed-by = "terraform"
  }

  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "Label keys must start with a lowercase letter; keys and values: lowercase letters, digits, '_' and '-', at most 63 chars."
  }
}

variable "cloud_build_service_account" {
  description = "E-mail of the service account Cloud Build runs skaffold's builds as (`gcloud builds get-default-service-account`). Empty: the Compute Engine default service account, Cloud Build's default in projects created since 2024."
  type        = string
  default     = ""

  validation {
    condition     = var.cloud_build_service_account == "" || can(regex("^[^@\\s]+@[a-z0-9.-]+\\.gserviceaccount\\.com$", var.cloud_build_service_account))
    error_message = "cloud_build_service_account must be a service account e-mail (NAME@PROJECT.iam.gserviceaccount.com or similar) or empty."
  }
}

variable "metrics_adapter_namespace" {
  description = "Namespace of the Custom Metrics Stackdriver Adapter (its upstream manifest uses custom-metrics)."
  type        = string
  default     = "custom-metrics"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.metrics_adapter_namespace))
    error_message = "metrics_adapter_namespace must be a DNS-1123 label."
  }
}

variable "metrics_adapter_ksa" {
  description = "Kubernetes service account of the Custom Metrics Stackdriver Adapter; it gets roles/monitoring.viewer."
  type        = string
  default     = "custom-metrics-stackdriver-adapter"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.metrics_adapter_ksa))
    error_message = "metrics_adapter_ksa must be a DNS-1123 label."
  }
}

variable "enable_iap" {
  description = "Reserve the global static IP of deploy/overlays/iap (billed while reserved). Set true before deploying the IAP overlay."
  type        = bool
  default     = false
}

variable "iap_static_ip_name" {
  description = "Name of the global static IP; must match kubernetes.io/ingress.global-static-ip-name in deploy/overlays/iap/ingress.yaml."
  type        = string
  default     = "gradio-chat-ip"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", var.iap_static_ip_name))
    error_message = "iap_static_ip_name must be a Compute Engine resource name."
  }
}

variable "history_ttl_days" {
  description = "Days after which attachments are deleted by the bucket's lifecycle rule; set HYBRID_CHAT_HISTORY_TTL_DAYS (deploy/base/kustomization.yaml) to the same number. 0 = never (files go when their conversation is deleted)."
  type        = number
  default     = 0

  validation {
    condition     = var.history_ttl_days >= 0 && floor(var.history_ttl_days) == var.history_ttl_days
    error_message = "history_ttl_days must be a whole number of days, 0 or more."
  }
}

variable "shared_state_memory_size_gb" {
  description = "Memory of the Memorystore for Redis instance the chat replicas share (memorystore.tf): counters and claims with expiry, a few MB per thousand users; 1 is the smallest Standard instance."
  type        = number
  default     = 1

  validation {
    condition     = var.shared_state_memory_size_gb >= 1 && var.shared_state_memory_size_gb <= 300 && floor(var.shared_state_memory_size_gb) == var.shared_state_memory_size_gb
    error_message = "shared_state_memory_size_gb must be a whole number of GB from 1 to 300."
  }
}
