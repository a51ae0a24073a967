// Package ftxml holds libvirt-ft's view of libvirt domain XML: the <ft:ft>
// metadata element that asks for fault tolerance, the checks that a domain
// can run under QEMU record/replay, and the generation of the primary's and
// the backup's domain XML with libvirtxml.
//
// A user protects a domain by defining it with our element in <metadata>:
//
//	<metadata>
//	  <ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0" role="primary">
//	    <ft:peer address="10.250.0.2" port="7480"/>
//	    <ft:heartbeat interval-ms="100" timeout-ms="1000"/>
//	    <ft:state dir="/var/lib/libvirt-ft"/>
//	    <ft:output-gate enabled="yes"/>
//	  </ft:ft>
//	</metadata>
//
// The element is found by its namespace URI ([NamespaceURI]), never by its
// prefix; other applications' metadata is kept byte for byte. The daemon
// rewrites the persistent definition with [Primary] (QEMU rr=record) and
// defines [Backup] (QEMU rr=replay) on the second host. How the generated
// pieces are wired through libvirt 9.0 (user aliases, a blkreplay -blockdev
// per disk pointed to by <qemu:override>, a filter-replay object per NIC,
// -icount) is described in docs/replay.md §9.
//
// Functions that take domain XML as a string parse it with [ParseDomain],
// which keeps namespace declarations that libvirt puts on <metadata> (or a
// user on <domain>) working; libvirtxml alone drops them. Functions that
// take a *libvirtxml.Domain see only Metadata.XML, so get such a Domain from
// [ParseDomain].
//
// Names that start with "ua-ft-" (device aliases) and "ft-" (QEMU node names
// and object ids) are reserved: they mark what this package generated, and
// [StripGenerated] removes them.
package ftxml
