mod config;
mod detect;
mod scrape;
fn main() {}
