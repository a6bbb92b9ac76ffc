from __future__ import annotations

from darkroom_kit.httpapp import serve

from darkroom_repair.app import SERVICE, create_app
from darkroom_repair.settings import RepairSettings


def main() -> None:
    # Settings are read from the environment here, once, and passed down.
    serve(SERVICE, RepairSettings(), create_app)


if __name__ == "__main__":
    main()
