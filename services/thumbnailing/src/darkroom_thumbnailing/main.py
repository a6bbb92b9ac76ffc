from __future__ import annotations

from darkroom_kit.httpapp import serve

from darkroom_thumbnailing.app import SERVICE, create_app
from darkroom_thumbnailing.settings import ThumbnailSettings


def main() -> None:
    # Settings are read from the environment here, once, and passed down.
    serve(SERVICE, ThumbnailSettings(), create_app)


if __name__ == "__main__":
    main()
