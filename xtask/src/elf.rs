//! A minimal ELF section-header reader.
//!
//! build-ebpf only needs the machine type and the section names of the object
//! bpf-linker produced, which does not justify a dependency. The bytes come
//! from an external tool, so every read is bounds-checked and every size is
//! computed with checked arithmetic: a truncated or corrupt file must give an
//! error, never a panic.

use anyhow::{bail, Context, Result};

/// e_machine value of eBPF objects.
pub const EM_BPF: u16 = 247;

/// Reserved section index meaning "the real value is stored in section 0".
const SHN_XINDEX: u16 = 0xffff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Elf32,
    Elf64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub kind: u32,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug)]
pub struct Elf {
    pub machine: u16,
    pub sections: Vec<Section>,
}

impl Elf {
    pub fn parse(data: &[u8]) -> Result<Elf> {
        let ident = data
            .get(..16)
            .context("file too short for an ELF identification header")?;
        if ident[..4] != *b"\x7fELF" {
            bail!("not an ELF file (bad magic)");
        }
        let class = match ident[4] {
            1 => Class::Elf32,
            2 => Class::Elf64,
            other => bail!("unsupported ELF class {other}"),
        };
        let endian = match ident[5] {
            1 => Endian::Little,
            2 => Endian::Big,
            other => bail!("unsupported ELF data encoding {other}"),
        };
        let r = Reader { data, endian };

        let machine = r.u16(18)?;
        let (shoff, shentsize, shnum, shstrndx, min_entsize) = match class {
            Class::Elf64 => (r.u64(40)?, r.u16(58)?, r.u16(60)?, r.u16(62)?, 64),
            Class::Elf32 => (
                u64::from(r.u32(32)?),
                r.u16(46)?,
                r.u16(48)?,
                r.u16(50)?,
                40,
            ),
        };
        if shoff == 0 {
            return Ok(Elf {
                machine,
                sections: Vec::new(),
            });
        }
        if shentsize < min_entsize {
            bail!("section header entry size {shentsize} is smaller than {min_entsize}");
        }

        let header = |index: u64| -> Result<RawSection> {
            let at = index
                .checked_mul(u64::from(shentsize))
                .and_then(|rel| rel.checked_add(shoff))
                .context("section header offset overflows")?;
            RawSection::read(&r, class, at)
        };

        // Files with 0xff00 or more sections keep the real count and string
        // table index in section 0 (gABI "Extended Section Indexes").
        let zeroth = header(0)?;
        let count = if shnum == 0 {
            zeroth.size
        } else {
            u64::from(shnum)
        };
        let strndx = if shstrndx == SHN_XINDEX {
            u64::from(zeroth.link)
        } else {
            u64::from(shstrndx)
        };

        // Check the whole table lies inside the file before allocating for it,
        // so a corrupt count cannot make us reserve gigabytes.
        let table_len = count
            .checked_mul(u64::from(shentsize))
            .context("section header table size overflows")?;
        r.bytes(shoff, table_len)
            .context("section header table extends past the end of the file")?;

        let raw = (0..count).map(header).collect::<Result<Vec<_>>>()?;

        let strtab = match strndx {
            0 => None,
            i => {
                let sec = raw.get(usize::try_from(i)?).with_context(|| {
                    format!("section name table index {i} is out of range ({count} sections)")
                })?;
                Some(
                    r.bytes(sec.offset, sec.size)
                        .context("section name table extends past the end of the file")?,
                )
            }
        };

        let sections = raw
            .into_iter()
            .map(|s| {
                let name = match strtab {
                    Some(tab) => name_at(tab, s.name)?,
                    None => String::new(),
                };
                Ok(Section {
                    name,
                    kind: s.kind,
                    offset: s.offset,
                    size: s.size,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Elf { machine, sections })
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

struct RawSection {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

impl RawSection {
    fn read(r: &Reader<'_>, class: Class, at: u64) -> Result<RawSection> {
        let field = |rel: u64| {
            at.checked_add(rel)
                .context("section header field offset overflows")
        };
        Ok(match class {
            Class::Elf64 => RawSection {
                name: r.u32(field(0)?)?,
                kind: r.u32(field(4)?)?,
                offset: r.u64(field(24)?)?,
                size: r.u64(field(32)?)?,
                link: r.u32(field(40)?)?,
            },
            Class::Elf32 => RawSection {
                name: r.u32(field(0)?)?,
                kind: r.u32(field(4)?)?,
                offset: u64::from(r.u32(field(16)?)?),
                size: u64::from(r.u32(field(20)?)?),
                link: r.u32(field(24)?)?,
            },
        })
    }
}

fn name_at(strtab: &[u8], offset: u32) -> Result<String> {
    let tail = strtab
        .get(usize::try_from(offset)?..)
        .with_context(|| format!("section name offset {offset} is outside the name table"))?;
    let end = tail
        .iter()
        .position(|&b| b == 0)
        .with_context(|| format!("section name at offset {offset} is not NUL-terminated"))?;
    Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
}

struct Reader<'a> {
    data: &'a [u8],
    endian: Endian,
}

impl<'a> Reader<'a> {
    fn bytes(&self, offset: u64, len: u64) -> Result<&'a [u8]> {
        let start = usize::try_from(offset)?;
        let end = start
            .checked_add(usize::try_from(len)?)
            .context("byte range overflows")?;
        self.data.get(start..end).with_context(|| {
            format!(
                "ELF data truncated: needed bytes {start}..{end}, file has {}",
                self.data.len()
            )
        })
    }

    fn array<const N: usize>(&self, offset: u64) -> Result<[u8; N]> {
        Ok(self.bytes(offset, N as u64)?.try_into()?)
    }

    fn u16(&self, offset: u64) -> Result<u16> {
        let b = self.array(offset)?;
        Ok(match self.endian {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        })
    }

    fn u32(&self, offset: u64) -> Result<u32> {
        let b = self.array(offset)?;
        Ok(match self.endian {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        })
    }

    fn u64(&self, offset: u64) -> Result<u64> {
        let b = self.array(offset)?;
        Ok(match self.endian {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a relocatable ELF with a null section, one PROGBITS section per
    /// name (each holding 4 bytes), and a trailing .shstrtab.
    fn build(class: Class, endian: Endian, machine: u16, names: &[&str]) -> Vec<u8> {
        let (ehsize, shentsize) = match class {
            Class::Elf64 => (64usize, 64usize),
            Class::Elf32 => (52, 40),
        };
        let put16 = |v: u16| match endian {
            Endian::Little => v.to_le_bytes().to_vec(),
            Endian::Big => v.to_be_bytes().to_vec(),
        };
        let put32 = |v: u32| match endian {
            Endian::Little => v.to_le_bytes().to_vec(),
            Endian::Big => v.to_be_bytes().to_vec(),
        };
        let put64 = |v: u64| match endian {
            Endian::Little => v.to_le_bytes().to_vec(),
            Endian::Big => v.to_be_bytes().to_vec(),
        };
        let word = |v: u64| match class {
            Class::Elf64 => put64(v),
            Class::Elf32 => put32(v as u32),
        };

        let mut strtab = vec![0u8];
        let mut name_offsets = Vec::new();
        for n in names.iter().chain([".shstrtab"].iter()) {
            name_offsets.push(strtab.len() as u32);
            strtab.extend_from_slice(n.as_bytes());
            strtab.push(0);
        }

        let mut body = Vec::new();
        let mut section_data = Vec::new();
        for _ in names {
            section_data.push(((ehsize + body.len()) as u64, 4u64));
            body.extend_from_slice(&[0xaa; 4]);
        }
        section_data.push(((ehsize + body.len()) as u64, strtab.len() as u64));
        body.extend_from_slice(&strtab);

        let shoff = (ehsize + body.len()) as u64;
        let shnum = (names.len() + 2) as u16;

        let mut out = vec![0x7f, b'E', b'L', b'F'];
        out.push(if class == Class::Elf64 { 2 } else { 1 });
        out.push(if endian == Endian::Little { 1 } else { 2 });
        out.push(1);
        out.resize(16, 0);
        out.extend(put16(1)); // ET_REL
        out.extend(put16(machine));
        out.extend(put32(1));
        out.extend(word(0)); // entry
        out.extend(word(0)); // phoff
        out.extend(word(shoff));
        out.extend(put32(0)); // flags
        out.extend(put16(ehsize as u16));
        out.extend(put16(0));
        out.extend(put16(0));
        out.extend(put16(shentsize as u16));
        out.extend(put16(shnum));
        out.extend(put16(shnum - 1));
        assert_eq!(out.len(), ehsize);
        out.extend(body);

        out.extend(vec![0u8; shentsize]); // SHN_UNDEF
        for (i, (off, size)) in section_data.iter().enumerate() {
            let kind = if i == names.len() { 3 } else { 1 }; // STRTAB / PROGBITS
            let start = out.len();
            out.extend(put32(name_offsets[i]));
            out.extend(put32(kind));
            out.extend(word(0)); // flags
            out.extend(word(0)); // addr
            out.extend(word(*off));
            out.extend(word(*size));
            out.resize(start + shentsize, 0);
        }
        out
    }

    #[test]
    fn finds_btf_in_elf64_little_endian() {
        let data = build(
            Class::Elf64,
            Endian::Little,
            EM_BPF,
            &["tracepoint/x", ".BTF", ".BTF.ext"],
        );
        let elf = Elf::parse(&data).unwrap();
        assert_eq!(elf.machine, EM_BPF);
        let names: Vec<_> = elf.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["", "tracepoint/x", ".BTF", ".BTF.ext", ".shstrtab"]);
        let btf = elf.section(".BTF").unwrap();
        assert_eq!(btf.size, 4);
        assert_eq!(data[btf.offset as usize], 0xaa);
    }

    #[test]
    fn reads_elf32_big_endian() {
        let data = build(Class::Elf32, Endian::Big, 8, &[".text"]);
        let elf = Elf::parse(&data).unwrap();
        assert_eq!(elf.machine, 8);
        assert!(elf.section(".text").is_some());
        assert!(elf.section(".BTF").is_none());
    }

    #[test]
    fn parses_a_real_linker_output() {
        // This test binary itself: a large ELF written by the system linker.
        let data = std::fs::read("/proc/self/exe").unwrap();
        let elf = Elf::parse(&data).unwrap();
        assert_ne!(elf.machine, EM_BPF);
        assert!(elf.section(".text").is_some_and(|s| s.size > 0));
        assert!(elf.section(".BTF").is_none());
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        let data = build(Class::Elf64, Endian::Little, EM_BPF, &[".BTF"]);
        for len in 0..data.len() {
            assert!(
                Elf::parse(&data[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
    }

    #[test]
    fn rejects_non_elf_and_corrupt_headers() {
        assert!(Elf::parse(b"#!/bin/sh\necho not an object\n").is_err());

        let mut data = build(Class::Elf64, Endian::Little, EM_BPF, &[".BTF"]);
        // e_shnum = 0xfff0: a table far larger than the file.
        data[60..62].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(Elf::parse(&data).is_err());

        let mut data = build(Class::Elf64, Endian::Little, EM_BPF, &[".BTF"]);
        // e_shoff near u64::MAX must not overflow.
        data[40..48].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        assert!(Elf::parse(&data).is_err());
    }
}
