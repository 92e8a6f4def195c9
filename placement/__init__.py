"""The placement leader: worker membership, leader election, the snapshot publisher and the
hot-tenant controller, and the placement service process that runs them beside the control
plane (``registry.control``)."""
