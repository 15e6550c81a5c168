"""Nova's metadata API semantics behind a proxy, and the proxy's signature."""

import hashlib
import hmac
import json

import pytest

from fabric.nova_metadata import InstanceStore, NovaMetadata, signature_matches
from vrouter.services.metadata.signing import sign_instance_id, tenant_header

INSTANCE = "0b9c4f2e-7a51-4c4b-9d6e-0d3c1f5a2b77"
PROJECT = "5a3f0c1e2d4b4f6a8c9e0b1d2f3a4c5e"
SECRET = "s3cret"


def test_signature_is_hmac_sha256_hex_of_instance_id():
    expected = hmac.new(SECRET.encode(), INSTANCE.encode(), hashlib.sha256).hexdigest()
    assert sign_instance_id(INSTANCE, SECRET) == expected
    assert len(expected) == 64 and expected == expected.lower()
    assert sign_instance_id(INSTANCE, "") == hmac.new(b"", INSTANCE.encode(), hashlib.sha256).hexdigest()
    assert signature_matches(INSTANCE, SECRET, expected)
    assert not signature_matches(INSTANCE, SECRET, expected[:-1] + "0" if expected[-1] != "0" else expected[:-1] + "1")
    assert not signature_matches(INSTANCE, "other", expected)


def test_tenant_header_has_no_dashes():
    assert tenant_header("5a3f0c1e-2d4b-4f6a-8c9e-0b1d2f3a4c5e") == PROJECT


@pytest.fixture
def api(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {
                "instances": [
                    {
                        "uuid": INSTANCE,
                        "name": "vm1",
                        "hostname": "vm1",
                        "project_id": PROJECT,
                        "public_keys": {"demo": "ssh-ed25519 AAAA demo"},
                        "user_data": "#cloud-config\nhostname: vm1\n",
                        "ip": "10.1.1.3",
                        "mac": "02:00:0a:01:00:03",
                        "port_uuid": "11111111-2222-3333-4444-555555555555",
                        "gateway": "10.1.1.1",
                    }
                ]
            }
        )
    )
    return NovaMetadata(InstanceStore(str(path)), SECRET)


def headers(instance=INSTANCE, tenant=PROJECT, signature=None, **extra):
    h = {"x-instance-id": [instance], "x-tenant-id": [tenant], "x-instance-id-signature": [signature or sign_instance_id(instance, SECRET)]}
    h.update(extra)
    return h


def test_root_lists_versions_without_identity(api):
    a = api.handle("GET", "/", {})
    assert a.status == 200
    assert a.body.decode().splitlines()[-1] == "latest" and "2009-04-04" in a.body.decode()


@pytest.mark.parametrize(
    "missing, text",
    [
        ("x-instance-id", "X-Instance-ID header is missing from request."),
        ("x-instance-id-signature", "X-Instance-ID-Signature header is missing from request."),
        ("x-tenant-id", "X-Tenant-ID header is missing from request."),
    ],
)
def test_missing_header_is_400_with_novas_text(api, missing, text):
    h = headers()
    del h[missing]
    a = api.handle("GET", "/openstack", h)
    assert a.status == 400 and text in a.body.decode()


def test_missing_headers_are_checked_in_novas_order(api):
    a = api.handle("GET", "/openstack", {"x-tenant-id": [PROJECT]})
    assert "X-Instance-ID header is missing" in a.body.decode()


def test_bad_signature_is_403(api):
    a = api.handle("GET", "/openstack", headers(signature="0" * 64))
    assert a.status == 403 and "Invalid proxy request signature." in a.body.decode()


def test_unknown_instance_and_wrong_tenant_are_404(api):
    other = "99999999-9999-9999-9999-999999999999"
    assert api.handle("GET", "/openstack", headers(instance=other)).status == 404
    assert api.handle("GET", "/openstack", headers(tenant="f" * 32)).status == 404


def test_duplicate_identity_headers_are_refused(api):
    h = headers()
    h["x-instance-id"] = [INSTANCE, INSTANCE]
    assert api.handle("GET", "/openstack", h).status == 400


def test_openstack_tree(api):
    versions = api.handle("GET", "/openstack", headers()).body.decode().splitlines()
    assert "2018-08-27" in versions and versions[-1] == "latest"
    md = api.handle("GET", "/openstack/latest/meta_data.json", headers())
    assert md.status == 200 and md.content_type == "application/json"
    data = json.loads(md.body)
    for key in ("uuid", "name", "hostname", "project_id", "availability_zone", "public_keys", "launch_index", "meta", "devices"):
        assert key in data
    assert data["uuid"] == INSTANCE
    assert api.handle("GET", "/openstack/2018-08-27/meta_data.json", headers()).status == 200
    assert api.handle("GET", "/openstack/1999-01-01/meta_data.json", headers()).status == 404
    assert api.handle("GET", "/openstack/latest/user_data", headers()).body == b"#cloud-config\nhostname: vm1\n"
    net = json.loads(api.handle("GET", "/openstack/latest/network_data.json", headers()).body)
    assert net["networks"][0]["ip_address"] == "10.1.1.3"
    assert net["links"][0]["ethernet_mac_address"] == "02:00:0a:01:00:03"
    for name in ("vendor_data.json", "vendor_data2.json"):
        assert json.loads(api.handle("GET", "/openstack/latest/" + name, headers()).body) == {}
    listing = api.handle("GET", "/openstack/latest", headers()).body.decode().splitlines()
    assert "meta_data.json" in listing and "user_data" in listing
    assert api.handle("GET", "/openstack/latest/nothing", headers()).status == 404


def test_ec2_tree(api):
    keys = api.handle("GET", "/latest/meta-data/", headers()).body.decode().splitlines()
    for k in ("instance-id", "hostname", "local-ipv4", "local-hostname", "instance-type", "ami-id", "reservation-id", "security-groups"):
        assert k in keys
    assert "placement/" in keys and "public-keys/" in keys
    assert api.handle("GET", "/latest/meta-data/local-ipv4", headers()).body == b"10.1.1.3"
    assert api.handle("GET", "/latest/meta-data/placement/availability-zone", headers()).body == b"nova"
    assert api.handle("GET", "/latest/meta-data/public-keys/", headers()).body == b"0=demo"
    assert api.handle("GET", "/latest/meta-data/public-keys/0/openssh-key", headers()).body == b"ssh-ed25519 AAAA demo"
    assert api.handle("GET", "/latest/user-data", headers()).body.startswith(b"#cloud-config")
    assert api.handle("GET", "/2009-04-04/meta-data/hostname", headers()).body == b"vm1"
    assert api.handle("GET", "/latest/meta-data/nothing", headers()).status == 404


def test_password_can_be_set_once(api):
    assert api.handle("GET", "/openstack/latest/password", headers()).body == b""
    assert api.handle("POST", "/openstack/latest/password", headers(), b"enc").status == 200
    assert api.handle("POST", "/openstack/latest/password", headers(), b"again").status == 409
    assert api.handle("GET", "/openstack/latest/password", headers()).body == b"enc"


def test_other_methods_are_refused(api):
    assert api.handle("PUT", "/openstack", headers()).status == 405
    assert api.handle("POST", "/openstack/latest/meta_data.json", headers()).status == 405
