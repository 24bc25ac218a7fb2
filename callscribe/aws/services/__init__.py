"""The deployment's processes: the API, webhook and exporter Lambdas' handlers, the Twilio
gateway, KVS reader and SIPREC recorder container services (what those three share is in
``ingest_task``). Each composes the core with the AWS adapters (``callscribe.adapters.aws``);
the entrypoints in ``functions/`` and ``containers/`` only import them."""
