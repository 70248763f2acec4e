"""A real local cloud for tests, demos and benchmarks: root, network namespaces, ipmi_sim
BMCs, private libvirtd per host, Nova in a box. Never imported by what ships to a compute
host (the tidy test bans it from every production package).

`netns` (namespaces, bridges, cuts), `mesh` (real agent processes in them),
`segment_files` (segment configs and secrets for them), `bmc` + `chassis` (ipmi_sim and
its chassis-control program), `libvirt_setup` (private libvirtd/QEMU per host),
`nbd_fault` (real block I/O errors), `nova_box` + `nova_client` (real Nova in its own
virtualenv, driven over HTTP).
"""
