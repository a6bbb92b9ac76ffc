"""darkroom's upload client: ``from darkroom_client import DarkroomClient``."""

from darkroom_client.client import DarkroomClient, UploadError, UploadResult

__all__ = ["DarkroomClient", "UploadError", "UploadResult"]
