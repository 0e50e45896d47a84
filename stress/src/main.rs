fn main() {
    println!("stress: coming");
}
