"""The deployment's processes: the API, webhook and exporter Lambdas' handlers, the Twilio
gateway and the KVS reader container services. Each composes the core with the AWS adapters
(``callscribe.adapters.aws``); the entrypoints in ``functions/`` and ``containers/`` only
import them."""
