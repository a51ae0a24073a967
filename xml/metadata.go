package ftxml

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// xmlNamespace is the namespace the reserved prefix "xml" is bound to.
const xmlNamespace = "http://www.w3.org/XML/1998/namespace"

// metaElem is one top-level element of <metadata>, located in the inner XML
// so that it can be replaced or kept byte for byte.
type metaElem struct {
	start, end int // byte range of the element in the inner XML
	prefix     string
	node       *node
	// inherited holds the namespace declarations (prefix → URI, "" for the
	// default namespace) that the element uses but that are made outside it,
	// on <metadata> or <domain>.
	inherited map[string]string
}

// node is a parsed element with namespaces resolved.
type node struct {
	name    xml.Name // Space is the namespace URI, "" for none
	prefix  string   // as written
	unbound bool     // prefix is not declared; name.Space is ""
	attrs   []xml.Attr
	// unboundAttrs names attributes whose prefix is not declared.
	unboundAttrs []string
	children     []*node
	text         string // non-whitespace character data directly inside
}

// qname is the element's name as written.
func (n *node) qname() string {
	if n.prefix == "" {
		return n.name.Local
	}
	return n.prefix + ":" + n.name.Local
}

// scanMetadata parses the inner XML of <metadata>. outer holds the namespace
// declarations in scope at <metadata> (nil if unknown).
func scanMetadata(inner string, outer map[string]string) ([]*metaElem, error) {
	dec := xml.NewDecoder(strings.NewReader(inner))
	type frame struct {
		ns  map[string]string
		raw xml.Name
		n   *node
	}
	var (
		stack []frame
		elems []*metaElem
		cur   *metaElem
	)
	// resolve finds the URI bound to prefix. It records in cur which outer
	// declarations are used.
	resolve := func(prefix string) (string, bool) {
		if prefix == "xml" {
			return xmlNamespace, true
		}
		for i := len(stack) - 1; i >= 0; i-- {
			if uri, ok := stack[i].ns[prefix]; ok {
				return uri, true
			}
		}
		if uri, ok := outer[prefix]; ok {
			if cur.inherited == nil {
				cur.inherited = map[string]string{}
			}
			cur.inherited[prefix] = uri
			return uri, true
		}
		return "", prefix == ""
	}
	for {
		off := int(dec.InputOffset())
		tok, err := dec.RawToken()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			f := frame{ns: map[string]string{}, raw: t.Name, n: &node{prefix: t.Name.Space}}
			for _, a := range t.Attr {
				switch {
				case a.Name.Space == "xmlns":
					f.ns[a.Name.Local] = a.Value
				case a.Name.Space == "" && a.Name.Local == "xmlns":
					f.ns[""] = a.Value
				}
			}
			if len(stack) == 0 {
				cur = &metaElem{start: off, prefix: t.Name.Space, node: f.n}
			} else {
				p := stack[len(stack)-1].n
				p.children = append(p.children, f.n)
			}
			stack = append(stack, f)
			uri, ok := resolve(t.Name.Space)
			f.n.name = xml.Name{Space: uri, Local: t.Name.Local}
			f.n.unbound = !ok
			for _, a := range t.Attr {
				if a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns") {
					continue
				}
				if a.Name.Space == "" {
					f.n.attrs = append(f.n.attrs, a)
					continue
				}
				uri, ok := resolve(a.Name.Space)
				if !ok {
					f.n.unboundAttrs = append(f.n.unboundAttrs, a.Name.Space+":"+a.Name.Local)
					continue
				}
				f.n.attrs = append(f.n.attrs, xml.Attr{Name: xml.Name{Space: uri, Local: a.Name.Local}, Value: a.Value})
			}
		case xml.EndElement:
			if len(stack) == 0 {
				return nil, fmt.Errorf("unexpected end element </%s>", rawName(t.Name))
			}
			if top := stack[len(stack)-1].raw; top != t.Name {
				return nil, fmt.Errorf("element <%s> closed by </%s>", rawName(top), rawName(t.Name))
			}
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				cur.end = int(dec.InputOffset())
				elems = append(elems, cur)
				cur = nil
			}
		case xml.CharData:
			if len(stack) > 0 && strings.TrimSpace(string(t)) != "" {
				n := stack[len(stack)-1].n
				n.text += string(t)
			}
		}
	}
	if len(stack) > 0 {
		return nil, fmt.Errorf("element <%s> is not closed", rawName(stack[len(stack)-1].raw))
	}
	return elems, nil
}

func rawName(n xml.Name) string {
	if n.Space == "" {
		return n.Local
	}
	return n.Space + ":" + n.Local
}

// metadataScope returns the namespace declarations in scope at the
// <metadata> element of a domain document: those on <domain> and on
// <metadata> itself. libvirt puts declarations on <metadata> when a user
// declared them on <domain>; libvirtxml keeps only the inner XML.
func metadataScope(doc string) (map[string]string, error) {
	dec := xml.NewDecoder(strings.NewReader(doc))
	scope := map[string]string{}
	depth := 0
	for {
		tok, err := dec.RawToken()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 1 || (depth == 2 && t.Name.Space == "" && t.Name.Local == "metadata") {
				for _, a := range t.Attr {
					switch {
					case a.Name.Space == "xmlns":
						scope[a.Name.Local] = a.Value
					case a.Name.Space == "" && a.Name.Local == "xmlns":
						scope[""] = a.Value
					}
				}
			}
			if depth == 2 && t.Name.Space == "" && t.Name.Local == "metadata" {
				return scope, nil
			}
		case xml.EndElement:
			depth--
		}
	}
}

// selfContain adds to every top-level element of inner the namespace
// declarations it uses from outer, so that the metadata means the same once
// <domain> and <metadata> lose their declarations. Other bytes are kept.
func selfContain(inner string, outer map[string]string) (string, error) {
	elems, err := scanMetadata(inner, outer)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	pos := 0
	for _, e := range elems {
		if len(e.inherited) == 0 {
			continue
		}
		at := e.start + 1 + len(e.node.qname())
		if at > len(inner) || inner[e.start+1:at] != e.node.qname() {
			return "", fmt.Errorf("cannot locate the name of <%s>", e.node.qname())
		}
		b.WriteString(inner[pos:at])
		prefixes := make([]string, 0, len(e.inherited))
		for p := range e.inherited {
			prefixes = append(prefixes, p)
		}
		sort.Strings(prefixes)
		for _, p := range prefixes {
			if p == "" {
				b.WriteString(` xmlns="`)
			} else {
				b.WriteString(` xmlns:` + p + `="`)
			}
			b.WriteString(escapeAttr(e.inherited[p]))
			b.WriteString(`"`)
		}
		pos = at
	}
	b.WriteString(inner[pos:])
	return b.String(), nil
}

// ParseDomain parses domain XML with libvirtxml and makes <metadata>
// self-contained: namespace declarations made on <domain> or <metadata>
// (libvirt's dumpxml does the latter) are copied onto the top-level metadata
// elements that use them, since libvirtxml keeps only the inner XML of
// <metadata>. Use it instead of libvirtxml's Unmarshal for the functions of
// this package that take a *libvirtxml.Domain.
func ParseDomain(domainXML string) (*libvirtxml.Domain, error) {
	dom := &libvirtxml.Domain{}
	if err := dom.Unmarshal(domainXML); err != nil {
		return nil, fmt.Errorf("ftxml: parse domain XML: %w", err)
	}
	if dom.Metadata == nil || strings.TrimSpace(dom.Metadata.XML) == "" {
		return dom, nil
	}
	scope, err := metadataScope(domainXML)
	if err != nil {
		return nil, fmt.Errorf("ftxml: parse domain XML: %w", err)
	}
	if len(scope) == 0 {
		return dom, nil
	}
	inner, err := selfContain(dom.Metadata.XML, scope)
	if err != nil {
		return nil, fmt.Errorf("ftxml: domain %q: metadata: %w", dom.Name, err)
	}
	dom.Metadata.XML = inner
	return dom, nil
}

func escapeAttr(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // a strings.Builder never fails
	return b.String()
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n'
}
