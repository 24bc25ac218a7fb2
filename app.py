"""CDK app entry point (`cdk synth` / `cdk deploy` run `python3 app.py`, see cdk.json).

The deployment's settings come from CDK context (cdk.json and `-c key=value`), validated by
infra/config.py; the stack is checked against cdk-nag's AWS Solutions rules at synthesis.
"""

import os
import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.config import ConfigError, deployment_target, load_config
from infra.stack import CallScribeStack


def main() -> None:
    app = cdk.App()
    try:
        config = load_config(app.node.get_all_context())
        account, region = deployment_target(config, os.environ)
    except ConfigError as exc:
        sys.exit(str(exc))
    CallScribeStack(
        app,
        f"CallScribe-{config.stage}",
        config=config,
        env=cdk.Environment(account=account, region=region),
    )
    # cdk-nag 3 runs as a policy-validation plugin: an unacknowledged finding fails synthesis
    # and is listed in cdk.out/validation-report.json.
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    app.synth()


if __name__ == "__main__":
    main()
