"""tus 1.0.0 uploads (https://tus.io): ``protocol`` reads and writes its headers, ``service``
drives the chunked upload's machine with it, ``store`` adds its record writes."""

from darkroom_ingest.tus.service import TusUploads, Written

__all__ = ["TusUploads", "Written"]
