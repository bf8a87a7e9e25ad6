fn main() {
    let s = scan_agent::sensor::Sensor::load(None).unwrap();
    println!("verified insns: {:?}", s.verified_instructions());
    let mut f = vec![0u8; 14 + 20 + 20];
    f[12] = 0x08; f[14] = 0x45; f[14+9] = 6; f[34+2] = 0x01; f[34+3] = 0xbd; f[34+12] = 0x50; f[34+13] = 0x02;
    let r = s.test_run(&f, 3).unwrap();
    println!("{:?}", r);
    let mut ports = vec![0u64; 65536];
    s.read_ports(&mut ports);
    println!("445: {}", ports[445]);
    println!("{:?}", s.read_classes().unwrap());
    for len in [0usize, 1, 13, 14] { println!("len {len}: {:?}", s.test_run(&f[..len], 1).map(|r| r.return_value)); } println!("{:?}", s.read_classes().unwrap());
}
