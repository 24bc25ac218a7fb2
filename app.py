"""CDK app entry point (`cdk synth` / `cdk deploy` run `python app.py`, see cdk.json).

The AWS stacks are not part of this version yet: this says so plainly instead of synthesising
an empty or partial deployment.
"""

import sys

sys.exit(
    "CallScribe's AWS deployment (infra/) is not available in this version; "
    "run CallScribe locally with `callscribe serve`."
)
