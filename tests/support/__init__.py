"""Reusable test helpers: real local servers (the Cloud Firestore emulator) started from pytest fixtures."""

from __future__ import annotations

from tests.support.firestore_emulator import FirestoreEmulator, firestore_emulator, wipe_database

__all__ = ["FirestoreEmulator", "firestore_emulator", "wipe_database"]
