//! The shop's catalog: what is for sale and at what price.
//!
//! Run with `cargo run --example shop_catalog`, or the whole shop with
//! `scripts/shop.sh` (docs/shop.md). Settings:
//!
//! - `ADDR`: where to listen (default `127.0.0.1:50251`); its Skiff's
//!   inbound listener sends every call here.

#[path = "common/mod.rs"]
mod common;

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use common::pb::catalog_server::CatalogServer;
use common::pb::{GetProductRequest, ListProductsRequest, Product};
use common::Call;

/// The catalog service: a list of products that does not change.
pub struct Catalog {
    products: Vec<Product>,
}

/// What the demo shop sells.
pub fn products() -> Vec<Product> {
    let product = |sku: &str, name: &str, price_cents| Product {
        sku: sku.into(),
        name: name.into(),
        price_cents,
    };
    vec![
        product("book", "Sailing by the stars", 2450),
        product("mug", "Enamel camp mug", 1200),
        product("rope", "Ten metres of good rope", 1875),
        product("lamp", "Storm lantern (few left)", 4900),
    ]
}

impl Catalog {
    pub fn new(products: Vec<Product>) -> Catalog {
        Catalog { products }
    }

    /// Serve on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(
                CatalogServer::new(self),
                common::incoming(listener),
                shutdown,
            )
            .await
    }
}

#[tonic::async_trait]
impl common::pb::catalog_server::Catalog for Catalog {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = common::env_or("ADDR", "127.0.0.1:50251");
    let listener = common::listen(&addr).await?;
    common::log(format_args!("catalog listening on {addr}"));
    Catalog::new(products())
        .serve(listener, common::stop_signal())
        .await?;
    common::log("catalog stopped");
    Ok(())
}
