"""AWS IoT Core as a policy driver: per device a thing (named by the device ID) with the
device's certificate registered without CA and attached, plus one IoT policy per tenant that
lets a connection use only its own client ID and topics (policy variables,
`${iot:Connection.Thing.ThingName}`).

Idempotent: every step accepts "already exists" / "already attached". If a step fails, what
this call created is removed again (best effort) and PolicyError is raised: the device is not
onboarded and a retry starts clean.

The tenant goes into the policy's name and its topic resources, where `*` and `?` are
wildcards, `${...}` a policy variable, and `+`/`#` MQTT wildcards. Only a tenant that is a name
by the one rule (store/names.py) gets a policy; any other (a record from before the rule) is
refused before AWS is asked anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from host.server.holds import hold
from host.server.policy import PolicyError
from host.server.store.names import name_problem

log = logging.getLogger("qlink.policy.aws")
_THING = "${iot:Connection.Thing.ThingName}"


def _tenant(tenant: str) -> str:
    problem = name_problem("tenant", tenant)
    if problem is not None:
        raise PolicyError(f"no AWS IoT policy for this tenant: {problem}")
    return tenant


def tenant_policy_name(tenant: str) -> str:
    return f"qlink-{_tenant(tenant)}"


def tenant_policy(tenant: str) -> dict[str, Any]:
    """The IoT policy document of a tenant's devices (AWS IoT Core policy JSON, version
    2012-10-17): connect as their thing name, publish/receive/subscribe under their prefix."""
    topic = f"qlink/{_tenant(tenant)}/{_THING}/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"arn:aws:iot:*:*:client/{_THING}",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": f"arn:aws:iot:*:*:topic/{topic}",
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": f"arn:aws:iot:*:*:topicfilter/{topic}",
            },
        ],
    }


def _code(e: Exception) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class AwsIotPolicy:
    """PolicyDriver over a boto3 `iot` client."""

    rights_from_certificate = False

    def __init__(self, client: Any) -> None:
        self.iot = client

    def _call(self, what: str, fn: Callable[[], Any], tolerate: tuple[str, ...] = ()) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as e:
            if _code(e) in tolerate:
                return None
            raise PolicyError(f"AWS IoT refused {what}: {_code(e) or e}") from None
        except BotoCoreError as e:
            raise PolicyError(f"AWS IoT unreachable for {what}: {e}") from None

    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        if certificate_der is None:
            raise PolicyError("AWS IoT registers the device's certificate; none was given")
        policy = tenant_policy_name(tenant)  # refuses a tenant that is not a name, first
        pem = (
            x509.load_der_x509_certificate(certificate_der)
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
        cert_id = hashlib.sha256(certificate_der).hexdigest()  # AWS's certificate ID
        undo: list[Callable[[], Any]] = []
        exists = ("ResourceAlreadyExistsException",)
        try:
            if (
                self._call(
                    "DescribeThing",
                    lambda: self.iot.describe_thing(thingName=device_id),
                    ("ResourceNotFoundException",),
                )
                is None
            ):
                self._call(
                    "CreateThing",
                    lambda: self.iot.create_thing(
                        thingName=device_id, attributePayload={"attributes": {"tenant": tenant}}
                    ),
                )
                undo.append(lambda: self.iot.delete_thing(thingName=device_id))
            self._call(
                "CreatePolicy",
                lambda: self.iot.create_policy(
                    policyName=policy, policyDocument=json.dumps(tenant_policy(tenant))
                ),
                exists,
            )
            made = self._call(
                "RegisterCertificateWithoutCA",
                lambda: self.iot.register_certificate_without_ca(
                    certificatePem=pem, status="ACTIVE"
                ),
                exists,
            )
            if made is not None:
                cert_id = made["certificateId"]
                undo.append(lambda: self.iot.delete_certificate(certificateId=cert_id))
                undo.append(
                    lambda: self.iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
                )
            hold("aws_registration")
            arn = self._call(
                "DescribeCertificate",
                lambda: self.iot.describe_certificate(certificateId=cert_id),
            )["certificateDescription"]["certificateArn"]
            self._call(
                "AttachPolicy", lambda: self.iot.attach_policy(policyName=policy, target=arn)
            )
            if made is not None:
                undo.append(lambda: self.iot.detach_policy(policyName=policy, target=arn))
            self._call(
                "AttachThingPrincipal",
                lambda: self.iot.attach_thing_principal(thingName=device_id, principal=arn),
            )
        except PolicyError:
            for step in reversed(undo):
                try:
                    step()
                except Exception:  # the rollback is best effort; the error below says what failed
                    log.warning("event=aws_rollback_failed device=%s", device_id)
            raise
        log.info("event=policy_registered driver=aws device=%s tenant=%s", device_id, tenant)

    def _principals(self, device_id: str) -> list[str]:
        answer = self._call(
            "ListThingPrincipals",
            lambda: self.iot.list_thing_principals(thingName=device_id),
            ("ResourceNotFoundException",),
        )
        return list(answer["principals"]) if answer else []

    def _set_status(self, device_id: str, status: str) -> None:
        for arn in self._principals(device_id):
            cert_id = arn.rsplit("/", 1)[-1]
            self._call(
                "UpdateCertificate",
                partial(self.iot.update_certificate, certificateId=cert_id, newStatus=status),
            )

    def disable_device(self, device_id: str) -> None:
        self._set_status(device_id, "INACTIVE")

    def enable_device(self, device_id: str) -> None:
        self._set_status(device_id, "ACTIVE")

    def delete_device(self, device_id: str) -> None:
        gone = ("ResourceNotFoundException",)
        for arn in self._principals(device_id):
            cert_id = arn.rsplit("/", 1)[-1]
            self._call(
                "DetachThingPrincipal",
                partial(self.iot.detach_thing_principal, thingName=device_id, principal=arn),
                gone,
            )
            for p in self._call(
                "ListAttachedPolicies", partial(self.iot.list_attached_policies, target=arn)
            )["policies"]:
                self._call(
                    "DetachPolicy",
                    partial(self.iot.detach_policy, policyName=p["policyName"], target=arn),
                    gone,
                )
            self._call(
                "UpdateCertificate",
                partial(self.iot.update_certificate, certificateId=cert_id, newStatus="INACTIVE"),
                gone,
            )
            self._call(
                "DeleteCertificate",
                partial(self.iot.delete_certificate, certificateId=cert_id),
                gone,
            )
        self._call("DeleteThing", lambda: self.iot.delete_thing(thingName=device_id), gone)

    def close(self) -> None:
        pass
