"""`mlflow server --app-name cameo-auth`: MLflow's basic-auth app (accounts, passwords, a
permission per experiment and registered model), plus one rule of cameo's: only the promoting
accounts move or delete an alias of a registered model.

MLflow's permissions cannot say this alone: registering a version and setting an alias both
need EDIT on the registered model, so the training account, which must register, could also
point `champion` at any version, and the serving pods would load it at their next start. Here
an alias request (`POST`/`DELETE .../registered-models/alias`) from an account not named in
$CAMEO_MLFLOW_PROMOTERS (comma-separated: a person, the evaluation step's account) is answered
403, after MLflow has authenticated it and before MLflow's own permission check.

The accounts and their permissions are `TRACKING_ACCOUNTS`, created by `create_accounts`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

PROMOTERS_ENV = "CAMEO_MLFLOW_PROMOTERS"
ALIAS_ROUTE = "/mlflow/registered-models/alias"


# Each service's account and what it may do beyond the server's default permission (READ):
# training, and Dagster's run pods (the model and evaluation assets), write runs and register
# versions; `cameo-promoter` (whoever runs `cameo model promote`) moves aliases; serving reads.
TRACKING_ACCOUNTS: dict[str, dict[str, str]] = {
    "cameo-training": {"experiment": "EDIT", "registered_model": "EDIT"},
    "cameo-dagster": {"experiment": "EDIT", "registered_model": "EDIT"},
    "cameo-promoter": {"registered_model": "EDIT"},
    "cameo-serving": {},
}


def promoters() -> frozenset[str]:
    """The accounts that may move aliases ($CAMEO_MLFLOW_PROMOTERS)."""
    names = os.environ.get(PROMOTERS_ENV, "").split(",")
    return frozenset(name.strip() for name in names if name.strip())


def refuse_alias_changes_by_others() -> Any:
    """Flask `before_request`: 403 for an alias change by an account that does not promote."""
    from flask import jsonify, request

    if request.method not in ("POST", "DELETE") or not request.path.endswith(ALIAS_ROUTE):
        return None
    username = request.authorization.username if request.authorization else None
    if username in promoters():
        return None
    message = (
        f"account {username!r} may not move or delete aliases: only the promoting accounts "
        f"({PROMOTERS_ENV}) may"
    )
    return jsonify(error_code="PERMISSION_DENIED", message=message), 403


def create_app() -> Any:
    """The `cameo-auth` app: MLflow's tracking server behind basic-auth, with the alias rule
    running after authentication."""
    from mlflow.server import app as tracking_app
    from mlflow.server.auth import create_app as basic_auth_app

    served = basic_auth_app(tracking_app)  # registers authentication first
    tracking_app.before_request(refuse_alias_changes_by_others)
    return served


def create_accounts(
    passwords: Mapping[str, str], accounts: Mapping[str, Mapping[str, str]] = TRACKING_ACCOUNTS
) -> None:
    """As an admin (MLFLOW_TRACKING_USERNAME/PASSWORD) of the server at $MLFLOW_TRACKING_URI:
    the `cameo` experiment and the registered model if missing, then each account of
    `accounts` with its password (an existing one gets it anew, which is how a password is
    rotated) and its permissions (a changed one replaced)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    from training.tracking import EXPERIMENT, REGISTERED_MODEL, configure_tracking

    tracking_uri = configure_tracking()
    ids = {
        "experiment": mlflow.get_experiment_by_name(EXPERIMENT).experiment_id,
        "registered_model": REGISTERED_MODEL,
    }
    with contextlib.suppress(MlflowException):  # it exists
        mlflow.MlflowClient().create_registered_model(REGISTERED_MODEL)
    auth = AuthServiceClient(tracking_uri)
    for username, permissions in accounts.items():
        try:
            auth.create_user(username, passwords[username])
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.update_user_password(username, passwords[username])
        for resource_type, permission in permissions.items():
            resource = ids[resource_type]
            held = auth.get_user_permission(username, resource_type, resource).permission
            if held == permission:
                continue
            with contextlib.suppress(MlflowException):  # a grant to replace (none: nothing)
                auth.revoke_user_permission(username, resource_type, resource)
            auth.grant_user_permission(username, resource_type, resource, permission)
