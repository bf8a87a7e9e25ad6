static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/scan-ebpf.o"));
fn main() { println!("{}", OBJ.len()); }
