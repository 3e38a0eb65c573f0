#!/usr/bin/env python3
"""Writes the SBOM of the scale-agent image: CycloneDX 1.5 JSON on stdout.

    scripts/sbom.py BINARY IMAGE_REF VERSION REVISION CREATED [CARGO_METADATA_JSON]

Its components are exactly the crates compiled into BINARY, read from the crate list
`cargo auditable build` embedded in it (the ELF section `.dep-v0`: zlib-compressed JSON),
so the SBOM and what a scanner reads from the binary itself (`cargo audit bin`, syft,
trivy, grype) agree; crates used only at build time (build scripts, proc macros' own
dependencies marked `build`) are left out. CARGO_METADATA_JSON (`cargo metadata
--format-version 1` output) adds each crate's license. The output depends only on its
inputs (no clock, no random serial number), so the same build gives the same SBOM.

scripts/build-oci-image.sh runs it and writes the result beside the archive.
"""

import hashlib
import json
import struct
import sys
import uuid
import zlib


def fail(message):
    sys.exit(f"sbom: {message}")


def elf_section(path, wanted):
    """The bytes of section `wanted` of the 64-bit little-endian ELF file at `path`."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        fail(f"{path} is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        fail(f"{path} is not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return name, offset, size

    _, names, _ = header(shstrndx)
    for i in range(shnum):
        name, offset, size = header(i)
        end = data.index(b"\0", names + name)
        if data[names + name : end] == wanted:
            return data[offset : offset + size]
    return None


def main():
    if len(sys.argv) not in (6, 7):
        fail(__doc__.strip().splitlines()[2].strip())
    binary, image_ref, version, revision, created = sys.argv[1:6]
    section = elf_section(binary, b".dep-v0")
    if section is None:
        fail(
            f"{binary} has no embedded crate list (.dep-v0): build it with `cargo auditable build` "
            "(scripts/cargo-auditable.sh installs it)"
        )
    packages = json.loads(zlib.decompress(section))["packages"]

    licenses = {}
    if len(sys.argv) == 7:
        with open(sys.argv[6]) as f:
            for p in json.load(f)["packages"]:
                if p.get("license"):
                    licenses[(p["name"], p["version"])] = p["license"]

    def ref(p):
        return f"pkg:cargo/{p['name']}@{p['version']}"

    runtime = [p.get("kind", "runtime") == "runtime" for p in packages]
    components, dependencies = [], []
    for i, p in enumerate(packages):
        if not runtime[i]:
            continue
        c = {
            "type": "application" if p.get("root") else "library",
            "bom-ref": ref(p),
            "name": p["name"],
            "version": p["version"],
        }
        if p.get("source") == "crates.io":
            c["purl"] = ref(p)
        else:
            c["properties"] = [{"name": "cargo:source", "value": p.get("source", "local")}]
        if (p["name"], p["version"]) in licenses:
            c["licenses"] = [{"expression": licenses[(p["name"], p["version"])]}]
        components.append(c)
        dependencies.append(
            {
                "ref": ref(p),
                "dependsOn": sorted(
                    {ref(packages[d]) for d in p.get("dependencies", []) if runtime[d]}
                ),
            }
        )

    digest = hashlib.sha256(section + revision.encode() + image_ref.encode()).digest()
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.UUID(bytes=digest[:16], version=4)}",
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": {
                "components": [
                    {"type": "application", "name": "scripts/sbom.py", "version": version}
                ]
            },
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": image_ref.rsplit(":", 1)[0],
                "version": version,
                "properties": [
                    {"name": "org.opencontainers.image.revision", "value": revision},
                    {"name": "executable", "value": "/usr/local/bin/scale-agent"},
                ],
            },
        },
        "components": sorted(components, key=lambda c: c["bom-ref"]),
        "dependencies": sorted(dependencies, key=lambda d: d["ref"]),
    }
    json.dump(bom, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
