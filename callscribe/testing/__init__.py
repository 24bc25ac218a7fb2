"""What plays the outside world against a real server, for the tests, the demo and the
benchmarks: simulated Twilio calls and a webhook receiver (``simulate``), and Amazon Connect's
Kinesis Video streams (``connect_stream``, written with ``mkv_writer``). Nothing in the
running service imports it."""
