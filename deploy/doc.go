// Package deploy holds precache's manifests: the kustomize base (DaemonSet, ServiceAccount,
// RBAC) with the image pinned by tag and digest, the overlays per install (kubespray,
// operator), and the bootstrap unit and its env file. It has no code; its test checks that
// what is committed here deploys a pinned image.
package deploy
