"""The session fixtures of test_infra.py (rendered overlays, parsed Terraform and skaffold.yaml), shared with
the other modules of tests/infra."""

from tests.infra.test_infra import rendered, rendered_text, skaffold, tf, tf_text  # noqa: F401
