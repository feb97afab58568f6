# Firestore (Native mode) database that holds the chat memory:
#   chat_sessions/{owner}:{session_id}         user_id, session_id, title, updated_at, expire_at, ...
#   chat_sessions/{owner}:{session_id}/messages/{id}   one document per message, expire_at copied
# ({owner}: sha256 of the user id, 32 hex digits: ids are scoped to their owner. An unowned session,
# langchain-google-firestore's layout, is chat_sessions/{session_id}.)
resource "google_firestore_database" "chat" {
  project     = var.project_id
  name        = "chat-app-db"
  location_id = var.firestore_location
  type        = "FIRESTORE_NATIVE"

  # Point-in-time recovery: 7 days of versions to recover from a bad deploy or a wrong delete.
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = "DELETE"

  depends_on = [google_project_service.apis]
}

# TTL policies: Firestore deletes a document some time (typically within 24 h) after its `expire_at`
# timestamp has passed. The app writes expire_at only when HYBRID_CHAT_HISTORY_TTL_DAYS > 0; documents
# without the field never expire. A TTL policy applies to one collection group, hence one per level.
# `index_config {}` turns off the single-field indexes on expire_at: nothing queries it, and indexing a
# monotonically increasing timestamp only creates write hotspots.
resource "google_firestore_field" "sessions_ttl" {
  project    = var.project_id
  database   = google_firestore_database.chat.name
  collection = "chat_sessions"
  field      = "expire_at"

  ttl_config {}
  index_config {}
}

resource "google_firestore_field" "messages_ttl" {
  project    = var.project_id
  database   = google_firestore_database.chat.name
  collection = "messages"
  field      = "expire_at"

  ttl_config {}
  index_config {}

  # Firestore accepts one field-configuration operation at a time per database.
  depends_on = [google_firestore_field.sessions_ttl]
}

# The conversation list: where("user_id", "==", uid).order_by("updated_at", DESCENDING).
resource "google_firestore_index" "sessions_by_user_recent" {
  project     = var.project_id
  database    = google_firestore_database.chat.name
  collection  = "chat_sessions"
  query_scope = "COLLECTION"

  fields {
    field_path = "user_id"
    order      = "ASCENDING"
  }

  fields {
    field_path = "updated_at"
    order      = "DESCENDING"
  }

  depends_on = [google_firestore_field.messages_ttl]
}
