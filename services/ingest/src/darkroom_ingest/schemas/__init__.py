"""The API's request and response models, one module per resource. They validate requests,
serialize answers and generate the OpenAPI document (see ``darkroom_ingest.api``)."""
