"""meshha: high availability for VMs on OpenStack compute hosts (see README.md and docs/ARCHITECTURE.md)."""
