from __future__ import annotations

from darkroom_kit.httpapp import serve

from darkroom_ingest.app import SERVICE, create_app
from darkroom_ingest.settings import IngestSettings


def main() -> None:
    # Settings are read from the environment here, once, and passed down.
    serve(SERVICE, IngestSettings(), create_app)


if __name__ == "__main__":
    main()
