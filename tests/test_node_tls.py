"""DICOM TLS (PS3.15 Annex B) with real peers: Orthanc sends to the node and receives its results
over mutual TLS; dcmtk's storescu sends over TLS; a peer whose certificate no trusted CA signed,
or one that speaks plain DICOM, is refused. Certificates are made here with openssl."""
import shutil
import ssl
import subprocess

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pynetdicom")

from certificates import LEAF, make_ca, make_leaf  # noqa: E402
from dicomnet import NODE_AET, NodeProcess, chest_dicoms, dcmtk, wait_for  # noqa: E402
from orthanc import BINARY, Orthanc, free_port  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import Verification  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    for name in ("node", "orthanc", "client"):
        make_leaf(d, name, "ca")
    make_ca(d, "rogue-ca")
    make_leaf(d, "rogue", "rogue-ca")
    # signed by the trusted CA, but itself a CA (CA:TRUE), or not for client authentication
    make_leaf(d, "ca-as-client", "ca", LEAF.replace("CA:FALSE", "CA:TRUE"))
    make_leaf(d, "server-only", "ca", LEAF.replace("serverAuth,clientAuth", "serverAuth"))
    # an intermediate CA the trusted CA issued, and a client leaf under it (sent with its chain)
    make_leaf(d, "intermediate", "ca", "basicConstraints=critical,CA:TRUE\n"
                                       "keyUsage=critical,keyCertSign,cRLSign\n")
    make_leaf(d, "via-intermediate", "intermediate")
    (d / "via-intermediate-chain.pem").write_text((d / "via-intermediate.pem").read_text() +
                                                  (d / "intermediate.pem").read_text())
    return d


def tls_options(pki, prefix=""):
    return (f"--{prefix}tls-cert", pki / "node.pem", f"--{prefix}tls-key", pki / "node.key",
            f"--{prefix}tls-ca", pki / "ca.pem")


def client_context(pki, name):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_cert_chain(pki / f"{name}.pem", pki / f"{name}.key")
    ctx.load_verify_locations(pki / "ca.pem")
    return ctx


def echo(port, ctx=None, title="XRAYINFER"):
    ae = AE(ae_title=title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    kwargs = {"tls_args": (ctx, "127.0.0.1")} if ctx is not None else {}
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET, **kwargs)
    if not assoc.is_established:
        return None
    code = int(assoc.send_c_echo().Status)
    assoc.release()
    return code


@pytest.fixture(scope="module")
def tls_node(pki, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls-node")
    n = NodeProcess(folder, free_port(), allow=("XRAYINFER@127.0.0.1",),
                    extra=tls_options(pki)).start()
    yield n
    n.stop()


def test_a_peer_needs_a_certificate_signed_by_the_trusted_ca(tls_node, pki):
    assert echo(tls_node.port, client_context(pki, "client")) == 0
    assert echo(tls_node.port, client_context(pki, "rogue")) is None
    assert echo(tls_node.port) is None  # plain DICOM to a TLS port
    wait_for(lambda: "TLS handshake failed" in tls_node.log.read_text(), timeout=30,
             what="the refusal logged")
    assert echo(tls_node.port, client_context(pki, "client"), title="EVIL") is None


def test_a_client_certificate_must_be_a_leaf_for_client_authentication(tls_node, pki):
    mark = len(tls_node.log.read_text())
    assert echo(tls_node.port, client_context(pki, "ca-as-client")) is None
    assert echo(tls_node.port, client_context(pki, "server-only")) is None
    # the first by the node's own check, the second by OpenSSL's purpose check already
    wait_for(lambda: "a CA certificate (CA:TRUE), not a client's" in
             tls_node.log.read_text()[mark:], timeout=30, what="the refusal logged")
    assert echo(tls_node.port, client_context(pki, "client")) == 0


def test_dcmtk_storescu_over_tls(tls_node, pki, tmp_path):
    storescu = dcmtk("storescu")
    if storescu is None:
        pytest.skip("dcmtk is not installed (Debian: apt-get install dcmtk)")
    [f] = chest_dicoms(tmp_path, 1, "DCMTK-TLS")

    def run(name):
        return subprocess.run([storescu, "+tls", pki / f"{name}.key", pki / f"{name}.pem",
                               "+cf", pki / "ca.pem", "-aet", "XRAYINFER", "-aec", NODE_AET,
                               "127.0.0.1", str(tls_node.port), f], capture_output=True,
                              text=True, timeout=60)
    ok = run("client")
    assert ok.returncode == 0, ok.stderr
    wait_for(lambda: len(tls_node.spooled()) >= 1, timeout=30, what="spooled")  # no PACS here
    assert run("rogue").returncode != 0


@pytest.mark.skipif(BINARY is None, reason="Orthanc is not installed")
def test_orthanc_to_node_to_orthanc_over_mutual_tls(pki, tmp_path):
    (pki / "trusted.pem").write_text((pki / "ca.pem").read_text() +
                                     (pki / "node.pem").read_text())
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", modalities={"xrayinfer": {
        "AET": NODE_AET, "Host": "127.0.0.1", "Port": node_port, "UseDicomTls": True}},
        extra={"DicomTlsEnabled": True, "DicomTlsCertificate": str(pki / "orthanc.pem"),
               "DicomTlsPrivateKey": str(pki / "orthanc.key"),
               "DicomTlsTrustedCertificates": str(pki / "trusted.pem"),
               "DicomTlsRemoteCertificateRequired": True}).start()
    node = NodeProcess(tmp_path / "node", orthanc.dicom_port, port=node_port,
                       allow=("ORTHANC@127.0.0.1",),
                       extra=(*tls_options(pki), *tls_options(pki, "forward-"))).start()
    try:
        files = chest_dicoms(tmp_path / "in", 2, "TLS-1")
        ids = [orthanc.upload(f) for f in files]
        orthanc.post("/modalities/xrayinfer/store", {"Resources": ids, "Synchronous": True})
        wait_for(lambda: len(orthanc.find_instances("SR", PatientID="TLS-1")) == 2,
                 what="2 SRs back in Orthanc")
        wait_for(lambda: len(orthanc.find_instances("OT", PatientID="TLS-1")) == 2,
                 what="2 SCs back in Orthanc")
        log = node.log.read_text()
        assert " (TLS), forwarding to ORTHANC@" in log and "(TLS), spool" in log
    finally:
        node.stop()
        orthanc.stop()


def test_a_client_chain_through_an_intermediate_needs_it_allowed_and_pins_narrow_it(
        pki, tmp_path):
    """A leaf under an intermediate CA (CA:TRUE) the trusted CA issued passes standard chain
    validation; the node takes only leaves the CA issued itself unless told any chain will do;
    pinned certificates admit those alone."""
    def ctx(name, chain=None):
        c = client_context(pki, name)
        if chain:
            c.load_cert_chain(pki / chain, pki / f"{name}.key")
        return c

    def fingerprint(name):
        import hashlib
        der = ssl.PEM_cert_to_DER_cert((pki / f"{name}.pem").read_text())
        return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    for extra, via_intermediate, client, orthanc in (
            ((), None, 0, 0),
            (("--tls-client-chain", "any"), 0, 0, 0),
            (("--tls-client-pin", fingerprint("client")), None, 0, None)):
        node = NodeProcess(tmp_path / f"node{len(extra)}{extra[:1]}", free_port(),
                           allow=("XRAYINFER@127.0.0.1",),
                           extra=(*tls_options(pki), *extra)).start()
        try:
            assert echo(node.port, ctx("via-intermediate", "via-intermediate-chain.pem")) \
                == via_intermediate, extra
            assert echo(node.port, ctx("client")) == client, extra
            assert echo(node.port, ctx("orthanc")) == orthanc, extra
            if via_intermediate is None and not extra:
                wait_for(lambda: "not issued directly by a CA of --tls-ca" in
                         node.log.read_text(), timeout=30, what="the refusal logged")
        finally:
            node.stop()
