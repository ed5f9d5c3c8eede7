//! `--pcap FILE`: a capture of every frame on the guest link, both
//! directions, in the classic pcap format (Ethernet link type, microsecond
//! timestamps), written with the `pcap-file` crate.
//!
//! Writes go through a `BufWriter`; the event loop calls [`Pcap::flush`]
//! after each batch of frames, so a test can read the file while usernet
//! runs, and once more on exit. `PcapWriter` gives no access to its writer,
//! so it writes into a shared handle whose other half we flush (a
//! mutex, never contended: one thread uses both halves).
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

/// A writer shared between the `PcapWriter` and [`Pcap::flush`].
#[derive(Debug, Clone)]
struct Shared(Arc<Mutex<BufWriter<File>>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BufWriter<File>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.lock().write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.lock().flush()
    }
}

/// An open capture file.
pub struct Pcap {
    writer: PcapWriter<Shared>,
    file: Shared,
}

impl std::fmt::Debug for Pcap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pcap").finish_non_exhaustive()
    }
}

fn to_io(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        e => io::Error::other(e),
    }
}

impl Pcap {
    /// Creates (or truncates) `path` and writes the file header.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = Shared(Arc::new(Mutex::new(BufWriter::new(File::create(path)?))));
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            snaplen: 65535,
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(file.clone(), header).map_err(to_io)?;
        let mut pcap = Pcap { writer, file };
        pcap.flush()?;
        Ok(pcap)
    }

    /// Appends one frame, stamped with the current wall-clock time.
    pub fn write(&mut self, frame: &[u8]) -> io::Result<()> {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let orig_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let data = &frame[..frame.len().min(self.writer.snaplen() as usize)];
        self.writer
            .write_packet(&PcapPacket::new(ts, orig_len, data))
            .map_err(to_io)?;
        Ok(())
    }

    /// Pushes buffered frames to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Pcap {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapReader;

    #[test]
    fn round_trip() {
        let path = std::env::temp_dir().join(format!("usernet-pcap-{}.pcap", std::process::id()));
        let mut p = Pcap::create(&path).expect("create");
        p.write(&[0xff; 60]).expect("write");
        p.write(&[0x52; 1514]).expect("write");
        p.flush().expect("flush");
        // Readable while still open.
        let mut r = PcapReader::new(File::open(&path).expect("open")).expect("header");
        assert_eq!(r.header().datalink, DataLink::ETHERNET);
        let a = r.next_packet().expect("one").expect("valid");
        assert_eq!(a.data.as_ref(), &[0xff; 60]);
        let b = r.next_packet().expect("two").expect("valid");
        assert_eq!((b.data.len(), b.orig_len), (1514, 1514));
        assert!(r.next_packet().is_none());
        drop(p);
        let _ = std::fs::remove_file(&path);
    }
}
