//! `shop catalog`: what is for sale and at what price. Calls no one.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::common::{self, Call, Health};
use crate::pb::catalog_server::CatalogServer;
use crate::pb::{GetProductRequest, ListProductsRequest, Product};

/// The catalog's flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to listen; its sidecar's inbound listener sends every call here.
    #[arg(long, env = "ADDR", default_value = "127.0.0.1:50251")]
    pub addr: String,
}

/// What the demo shop sells: SKU, name, price in cents.
pub const PRODUCTS: &[(&str, &str, i64)] = &[
    ("book", "Sailing by the stars", 2450),
    ("mug", "Enamel camp mug", 1200),
    ("rope", "Ten metres of good rope", 1875),
    ("lamp", "Storm lantern (few left)", 4900),
];

/// The catalog service: a list of products that does not change.
pub struct Catalog {
    products: Vec<Product>,
}

impl Catalog {
    pub fn new() -> Catalog {
        let products = PRODUCTS
            .iter()
            .map(|&(sku, name, price_cents)| Product {
                sku: sku.into(),
                name: name.into(),
                price_cents,
            })
            .collect();
        Catalog { products }
    }
}

#[tonic::async_trait]
impl crate::pb::catalog_server::Catalog for Catalog {
    async fn get_product(
        &self,
        req: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let req = req.into_inner();
        let call = Call::start("Catalog/GetProduct", format!("sku={}", req.sku));
        let Some(product) = self.products.iter().find(|p| p.sku == req.sku) else {
            return call.end(Err(Status::not_found(format!("no product {:?}", req.sku))));
        };
        call.end(Ok(Response::new(product.clone())))
    }

    type ListProductsStream = ReceiverStream<Result<Product, Status>>;

    async fn list_products(
        &self,
        _req: Request<ListProductsRequest>,
    ) -> Result<Response<Self::ListProductsStream>, Status> {
        let call = Call::start("Catalog/ListProducts", "");
        let (tx, rx) = mpsc::channel(4);
        let products = self.products.clone();
        tokio::spawn(async move {
            for p in products {
                if tx.send(Ok(p)).await.is_err() {
                    return; // the caller went away; `call` says so
                }
            }
            call.done();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let listener = common::listen(&args.addr).await?;
    let (health, serving) = Health::new("shop.Catalog");
    common::log(format_args!("catalog listening on {}", args.addr));
    common::serve(
        "catalog",
        CatalogServer::new(Catalog::new()),
        health,
        serving,
        listener,
    )
    .await
}
