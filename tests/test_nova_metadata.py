"""Nova's metadata API semantics behind a proxy, and the proxy's signature."""

import base64
import hashlib
import hmac
import http.client
import json
import threading

import pytest

from fabric.nova_metadata import InstancesError, InstanceStore, NovaMetadata, make_server, parse_instances, signature_matches
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


BASE = {
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


class _Store(InstanceStore):
    """The instances given, without a file."""

    def __init__(self, instances):
        self.instances, self.shared, self.passwords = instances, {}, {}

    def refresh(self):
        pass


def make_api(**changes):
    """NovaMetadata over one instance: BASE with ``changes`` (None removes a key)."""
    inst = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    return NovaMetadata(_Store(parse_instances(json.dumps({"instances": [inst]}))), SECRET)


@pytest.fixture
def api(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"instances": [BASE]}))
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
    for key in ("uuid", "name", "hostname", "project_id", "availability_zone", "public_keys", "launch_index", "devices"):
        assert key in data
    assert "meta" not in data  # Nova leaves out an empty meta
    assert data["uuid"] == INSTANCE
    assert api.handle("GET", "/openstack/2018-08-27/meta_data.json", headers()).status == 200
    assert api.handle("GET", "/openstack/1999-01-01/meta_data.json", headers()).status == 404
    assert api.handle("GET", "/openstack/latest/user_data", headers()).body == b"#cloud-config\nhostname: vm1\n"
    net = json.loads(api.handle("GET", "/openstack/latest/network_data.json", headers()).body)
    assert net["networks"][0]["ip_address"] == "10.1.1.3"
    assert net["links"][0]["ethernet_mac_address"] == "02:00:0a:01:00:03"
    assert json.loads(api.handle("GET", "/openstack/latest/vendor_data.json", headers()).body) == {}
    assert json.loads(api.handle("GET", "/openstack/latest/vendor_data2.json", headers()).body) == {"static": {}}  # Nova's StaticJSON
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


def test_methods_are_not_checked_but_the_password_paths(api):
    """Nova's handler looks up any method's path like GET's (IMDSv2's token PUT is a 404 since EC2
    has no ``api``); only the password path refuses methods."""
    assert api.handle("PUT", "/openstack", headers()).body == api.handle("GET", "/openstack", headers()).body
    assert api.handle("POST", "/openstack/latest/meta_data.json", headers()).status == 200
    assert api.handle("DELETE", "/latest/meta-data/hostname", headers()).body == b"vm1"
    token = api.handle("PUT", "/latest/api/token", headers(**{"x-aws-ec2-metadata-token-ttl-seconds": ["21600"]}))
    assert token.status == 404 and b"The resource could not be found." in token.body
    assert api.handle("PUT", "/latest/api/token", {}).status == 400  # the identity first, as Nova
    head = api.handle("HEAD", "/openstack/latest/meta_data.json", headers())
    assert head.status == 200 and head.body == api.handle("GET", "/openstack/latest/meta_data.json", headers()).body  # the shell drops it


@pytest.mark.parametrize(
    "path, same_as",
    [
        ("/openstack/", "/openstack"),
        ("/openstack/latest/", "/openstack/latest"),
        ("/openstack/latest/meta_data.json/", "/openstack/latest/meta_data.json"),
        ("/openstack/2012-08-10/../latest/user_data", "/openstack/latest/user_data"),
        ("/latest/meta-data", "/latest/meta-data/"),
        ("/latest/meta-data/placement/", "/latest/meta-data/placement"),
        ("/ec2/latest/meta-data/hostname", "/latest/meta-data/hostname"),
        ("/latest/meta-data/hostname?x=1", "/latest/meta-data/hostname"),
        ("/latest/meta%2Ddata/hostname", "/latest/meta-data/hostname"),
        ("/ec2", "/"),
        ("//openstack", "/"),  # normpath keeps a leading "//": the first token is empty, EC2's root
    ],
)
def test_paths_are_normalised_as_nova_does(api, path, same_as):
    a, b = api.handle("GET", path, headers()), api.handle("GET", same_as, headers())
    assert a.status == b.status == 200 and a.body == b.body and a.content_type == b.content_type


def test_openstack_versions_include_epoxy():
    api = make_api()
    versions = api.handle("GET", "/openstack", headers()).body.decode().splitlines()
    assert versions == ["2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30", "2016-10-06", "2017-02-22",
                        "2018-08-27", "2020-10-14", "2025-04-04", "latest"]  # fmt: skip


@pytest.mark.parametrize(
    "version, listed",
    [
        ("2012-08-10", ["meta_data.json", "user_data"]),
        ("2013-04-04", ["meta_data.json", "user_data", "password"]),
        ("2013-10-17", ["meta_data.json", "user_data", "password", "vendor_data.json"]),
        ("2015-10-15", ["meta_data.json", "user_data", "password", "vendor_data.json", "network_data.json"]),
        ("2016-06-30", ["meta_data.json", "user_data", "password", "vendor_data.json", "network_data.json"]),
        ("2016-10-06", ["meta_data.json", "user_data", "password", "vendor_data.json", "network_data.json", "vendor_data2.json"]),
        ("latest", ["meta_data.json", "user_data", "password", "vendor_data.json", "network_data.json", "vendor_data2.json"]),
    ],
)
def test_each_version_lists_and_serves_its_files(api, version, listed):
    assert api.handle("GET", "/openstack/%s" % version, headers()).body.decode().splitlines() == listed
    assert api.handle("GET", "/openstack/%s/version" % version, headers()).body.decode().splitlines() == listed  # Nova's alias
    for name in ("password", "vendor_data.json", "vendor_data2.json"):  # gated in the service too
        assert api.handle("GET", "/openstack/%s/%s" % (version, name), headers()).status == (200 if name in listed else 404)
    for name in ("meta_data.json", "user_data", "network_data.json"):  # not gated (network_data.json is only not listed)
        assert api.handle("GET", "/openstack/%s/%s" % (version, name), headers()).status == 200


@pytest.mark.parametrize(
    "version, more",
    [
        ("2012-08-10", set()),
        ("2013-04-04", {"random_seed"}),
        ("2015-10-15", {"random_seed", "project_id"}),
        ("2016-06-30", {"random_seed", "project_id", "devices"}),
        ("2018-08-27", {"random_seed", "project_id", "devices"}),
        ("2020-10-14", {"random_seed", "project_id", "devices", "dedicated_cpus"}),
        ("latest", {"random_seed", "project_id", "devices", "dedicated_cpus"}),
    ],
)
def test_meta_data_json_has_each_versions_keys_in_novas_order(version, more):
    api = make_api(meta={"role": "db"}, admin_pass="pw")
    md = json.loads(api.handle("GET", "/openstack/%s/meta_data.json" % version, headers()).body)
    always = ["uuid", "meta", "admin_pass", "public_keys", "keys", "hostname", "name", "launch_index", "availability_zone"]
    assert list(md) == always + [k for k in ("random_seed", "project_id", "devices", "dedicated_cpus") if k in more]
    assert md["keys"] == [{"name": "demo", "type": "ssh", "data": "ssh-ed25519 AAAA demo"}]
    if "random_seed" in more:
        assert len(base64.b64decode(md["random_seed"])) == 512  # Nova's size; the same at every request here
        assert api.handle("GET", "/openstack/%s/meta_data.json" % version, headers()).body == json.dumps(md).encode()


def test_content_types_are_novas(api):
    def ctype(path):
        return api.handle("GET", path, headers()).content_type

    assert ctype("/openstack/latest/meta_data.json") == ctype("/openstack/latest/vendor_data.json") == "application/json"
    assert ctype("/openstack/latest/vendor_data2.json") == "application/json"
    text = "text/plain; charset=UTF-8"
    assert ctype("/openstack/latest/network_data.json") == text  # Nova does not set JSON's there
    assert ctype("/openstack/latest/user_data") == ctype("/openstack") == ctype("/latest/meta-data/hostname") == text
    assert ctype("/openstack/latest/password") == "text/html; charset=UTF-8"  # webob's default, kept by the password handler
    assert api.handle("GET", "/", {}).content_type == text


def test_injected_files_are_the_config_drives_only():
    """Nova's metadata service has no record of injected files: no ``files`` in meta_data.json,
    and openstack/content/ is a 404 (the config drive has both)."""
    api = make_api(files=[{"path": "/etc/motd", "contents": "hello\n"}])
    assert "files" not in json.loads(api.handle("GET", "/openstack/latest/meta_data.json", headers()).body)
    for path in ("/openstack/content/0000", "/openstack/content", "/openstack/latest/content/0000"):
        assert api.handle("GET", path, headers()).status == 404


def test_where_novas_own_code_fails_it_answers_500(api):
    for path in ("/openstack/latest/content", "/latest/meta-data/hostname/x", "/latest/meta-data/security-groups/default"):
        assert api.handle("GET", path, headers()).status == 500, path
    assert api.handle("GET", "/latest/meta-data/hostname/x/y", headers()).status == 404


@pytest.mark.parametrize(
    "version, has, lacks",
    [
        (
            "1.0",
            ["ami-id", "instance-id", "hostname", "local-ipv4", "public-keys/", "security-groups"],
            ["local-hostname", "instance-type", "placement/"],
        ),
        ("2007-01-19", ["local-hostname", "public-hostname", "public-ipv4"], ["instance-type", "block-device-mapping/"]),
        ("2007-08-29", ["instance-type"], ["block-device-mapping/", "placement/"]),
        ("2007-12-15", ["block-device-mapping/"], ["placement/", "instance-action"]),
        ("2008-02-01", ["placement/"], ["instance-action"]),
        ("2009-04-04", ["instance-action", "placement/", "instance-type"], []),
    ],
)
def test_each_ec2_version_has_its_keys(api, version, has, lacks):
    keys = api.handle("GET", "/%s/meta-data/" % version, headers()).body.decode().splitlines()
    assert keys == sorted(keys) and set(has) <= set(keys) and not set(lacks) & set(keys)
    assert api.handle("GET", "/2006-01-01/meta-data/", headers()).status == 404


def test_what_afterburn_and_cloudbase_init_ask_of_ec2(api):
    def get(path):
        a = api.handle("GET", path, headers())
        assert a.status == 200, path
        return a.body

    for version in ("latest", "2009-04-04"):
        assert get("/%s/meta-data/instance-id" % version).startswith(b"i-")
        assert get("/%s/meta-data/hostname" % version) == get("/%s/meta-data/local-hostname" % version) == b"vm1"
        assert get("/%s/meta-data/local-ipv4" % version) == b"10.1.1.3"
        assert get("/%s/meta-data/public-ipv4" % version) == b""  # no floating IP: Nova's empty answer
        assert get("/%s/meta-data/instance-type" % version) == b"m1.small"
        assert get("/%s/meta-data/placement/availability-zone" % version) == b"nova"
        assert get("/%s/meta-data/public-keys" % version) == b"0=demo"
        assert get("/%s/meta-data/public-keys/0" % version) == b"openssh-key"
        assert get("/%s/meta-data/public-keys/0/openssh-key" % version) == b"ssh-ed25519 AAAA demo"
        assert get("/%s/meta-data/ami-launch-index" % version) == b"0"
        assert get("/%s/meta-data/block-device-mapping" % version) == b"ami\nroot"
    assert get("/latest") == b"meta-data/\nuser-data"


def test_an_instance_without_key_user_data_or_address():
    api = make_api(public_keys=None, user_data=None, ip=None)
    assert "public-keys/" not in api.handle("GET", "/latest/meta-data/", headers()).body.decode().splitlines()
    assert api.handle("GET", "/latest/meta-data/public-keys", headers()).status == 404
    assert api.handle("GET", "/latest", headers()).body == b"meta-data/"
    assert api.handle("GET", "/latest/user-data", headers()).status == 404
    assert api.handle("GET", "/openstack/latest/user_data", headers()).status == 404
    assert "public_keys" not in json.loads(api.handle("GET", "/openstack/latest/meta_data.json", headers()).body)
    forwarded = headers(**{"x-forwarded-for": ["10.1.1.9"]})
    assert api.handle("GET", "/latest/meta-data/local-ipv4", forwarded).body == b"10.1.1.9"  # Nova's fallback: the requester


def test_password_post_rules(api):
    def post(body, version="latest"):
        return api.handle("POST", "/openstack/%s/password" % version, headers(), body)

    assert post(b"x" * 1021).status == 400 and b"Request is too large." in post(b"x" * 1021).body
    assert post(b"").status == 200 and api.handle("GET", "/openstack/latest/password", headers()).body == b""  # empty: still unset
    assert post(b"x" * 1020, "2013-04-04").status == 200
    conflict = post(b"y" * 2000)
    assert conflict.status == 409 and b"There was a conflict when trying to complete your request." in conflict.body  # before the size
    assert api.handle("GET", "/openstack/2013-04-04/password", headers()).body == b"x" * 1020
    assert post(b"z", "2012-08-10").status == 404  # no password before 2013-04-04
    for method in ("PUT", "HEAD", "DELETE"):
        a = api.handle(method, "/openstack/latest/password", headers(), b"z")
        assert a.status == 400 and b"GET and POST only are supported." in a.body


@pytest.mark.parametrize(
    "files, says",
    [
        ({"path": "/x"}, "files must be a list"),
        (["/x"], r"files\[0\] must be an object with a \"path\""),
        ([{"path": "", "contents": "x"}], r"files\[0\] must be an object"),
        ([{"path": "/x"}], r"files\[0\] \(/x\): contents must be a string"),
        ([{"path": "/x", "contents": {"base64": "!!"}}], "contents must be a string or"),
        ([{"path": "/x", "contents": 5}], "contents must be a string or"),
        ([{"path": "/x", "contents": "a", "mode": "0600"}], "unknown keys mode"),
        ([{"path": "/x", "contents": "a"}, {"path": "/x", "contents": "b"}], "/x twice"),
    ],
)
def test_injected_files_are_validated(files, says):
    with pytest.raises(InstancesError, match=says):
        parse_instances(json.dumps({"instances": [{"uuid": INSTANCE, "files": files}]}))


def test_valid_injected_files_are_kept():
    files = [{"path": "/etc/motd", "contents": "hi"}, {"path": "/root/b", "contents": {"base64": "AP8="}}]
    assert parse_instances(json.dumps({"instances": [{"uuid": INSTANCE, "files": files}]}))[INSTANCE]["files"] == files


def test_the_http_shell_passes_any_method_and_drops_heads_body(api):
    """Over loopback, in-process: PUT and OPTIONS reach ``handle`` (not the server's 501)."""
    server = make_server("127.0.0.1", 0, api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        h = {k: v[0] for k, v in headers().items()}
        for method, path, status in (("PUT", "/latest/api/token", 404), ("OPTIONS", "/openstack", 200), ("HEAD", "/latest/meta-data/hostname", 200)):
            conn.request(method, path, headers=h)
            r = conn.getresponse()
            body = r.read()
            assert r.status == status, (method, path)
            if method == "HEAD":
                assert body == b"" and r.getheader("Content-Length") == "3"
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
