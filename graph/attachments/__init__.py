"""Attachments (images, PDFs): reading them from content blocks (`blocks`), keeping them outside the
message documents (`store`). Checks of their bytes are in `graph.validation`."""
