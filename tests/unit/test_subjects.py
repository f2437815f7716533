import pytest

from nodemesh import subjects


@pytest.mark.parametrize(
    ("kind", "ns", "name", "want"),
    [
        ("Pod", "default", "web-1", "k8s.obj.pod.default.web-1"),
        ("Namespace", "", "kube-system", "k8s.obj.namespace._.kube-system"),
        ("Secret", "a.b", "tls.example.com", "k8s.obj.secret.a~b.tls~example~com"),
    ],
    ids=["namespaced", "cluster-scoped", "dotted-names"],
)
def test_k8s_object_subjects(kind: str, ns: str, name: str, want: str) -> None:
    assert subjects.k8s_object(kind, ns, name) == want
    *_, tns, tname = want.split(".")
    assert subjects.untoken(tns) == ns
    assert subjects.untoken(tname) == name
