from __future__ import annotations

from darkroom_kit.httpapp import serve

from darkroom_webhooks.app import SERVICE, create_app
from darkroom_webhooks.settings import WebhookSettings


def main() -> None:
    # Settings are read from the environment here, once, and passed down.
    serve(SERVICE, WebhookSettings(), create_app)


if __name__ == "__main__":
    main()
