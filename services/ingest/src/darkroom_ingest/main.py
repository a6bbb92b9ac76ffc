from __future__ import annotations

from darkroom_kit.httpapp import run
from darkroom_kit.logs import configure_logging

from darkroom_ingest.app import SERVICE, create_app
from darkroom_ingest.settings import IngestSettings


def main() -> None:
    settings = IngestSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_json)
    run(create_app(settings), settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
